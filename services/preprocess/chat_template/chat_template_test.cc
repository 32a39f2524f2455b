// Unit tests of the chat template interpreter; comparisons with transformers itself are in
// tests/chat_template (pytest).
#include "services/preprocess/chat_template/chat_template.h"

#include <gtest/gtest.h>

namespace flotilla::chat_template {
namespace {

std::string Render(const std::string& source, const std::string& messages = R"([{"role": "user", "content": "Hi"}])",
                   ChatTemplateOptions options = {}) {
  absl::StatusOr<std::string> rendered = RenderChatTemplate(source, messages, options);
  EXPECT_TRUE(rendered.ok()) << rendered.status();
  return rendered.ok() ? *rendered : "";
}

absl::Status RenderError(const std::string& source, ChatTemplateOptions options = {}) {
  absl::StatusOr<std::string> rendered = RenderChatTemplate(source, R"([{"role": "user", "content": "Hi"}])", options);
  EXPECT_FALSE(rendered.ok());
  return rendered.status();
}

TEST(ChatTemplateTest, RendersMessagesAndGenerationPrompt) {
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  options.special_tokens = {{"bos_token", "<s>"}};
  EXPECT_EQ(Render("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m['content'] }}{% endfor %}"
                   "{% if add_generation_prompt %}<assistant>{% endif %}",
                   R"([{"role": "user", "content": "Hi"}])", options),
            "<s><user>Hi<assistant>");
}

TEST(ChatTemplateTest, WhitespaceControlFollowsTrimAndLstripBlocks) {
  EXPECT_EQ(Render("  {% if true %}\n  x\n  {% endif %}\n  y\n"), "  x\n  y");
  EXPECT_EQ(Render("a  {%- if true -%}  b  {%- endif %}"), "ab");
  EXPECT_EQ(Render("a\n{#- c -#}\nb"), "ab");
  EXPECT_EQ(Render("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
}

TEST(ChatTemplateTest, PythonValueFormatting) {
  EXPECT_EQ(Render("{{ 1.0 }} {{ 1e20 }} {{ 0.00001 }} {{ 1/3 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }}"),
            "1.0 1e+20 1e-05 0.3333333333333333 3 -4 2");
  EXPECT_EQ(Render("{{ [1, 'a', none, true, {'b': 1.5}] }} {{ ('x',) }} {{ \"it's\" }}"),
            "[1, 'a', None, True, {'b': 1.5}] ('x',) it's");
}

TEST(ChatTemplateTest, LoopVariablesAndScoping) {
  EXPECT_EQ(Render("{% for x in [1,2,3] if x > 1 %}{{ loop.index }}/{{ loop.length }}{{ loop.first }}{{ loop.last }}"
                   "{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('a','b') }}{{ loop.revindex }}{% endfor %}"),
            "1/2TrueFalse3a22/2FalseTrue2b1");
  EXPECT_EQ(Render("{% set x = 5 %}{% for i in [1,2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}"), "51525");
  EXPECT_EQ(Render("{% set ns = namespace(a=1) %}{% for i in [1,2] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}"), "4");
  EXPECT_EQ(Render("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "02");
}

TEST(ChatTemplateTest, SlicesFiltersAndMethods) {
  EXPECT_EQ(Render("{{ 'abc'[::-1] }}{{ [1,2,3][-1] }}{{ 'abcdef'[-2:] }}{{ [1,2,3][1:10:2] }}"), "cba3ef[2]");
  EXPECT_EQ(Render("{{ ' a  b '.split() }}{{ 'a,b,c'.split(',', 1) }}{{ '  x '|trim }}{{ 'ab'.startswith('a') }}"),
            "['a', 'b']['a', 'b,c']xTrue");
  EXPECT_EQ(Render("{{ {'a': [1, 2]}|tojson(indent=2) }}"), "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
  EXPECT_EQ(Render("{{ ['B','a','c']|sort }}{{ [{'a':1},{'a':2}]|map(attribute='a')|list }}{{ [1,2,3]|select('odd')|join(',') }}"),
            "['a', 'B', 'c'][1, 2]1,3");
}

TEST(ChatTemplateTest, RaiseExceptionGivesTheTemplateMessage) {
  absl::Status status = RenderError("line one\n{{ raise_exception('Conversation roles must alternate') }}");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("Conversation roles must alternate"), std::string::npos) << status;
  EXPECT_NE(status.message().find("line 2, column 4"), std::string::npos) << status;
}

TEST(ChatTemplateTest, SyntaxErrorsNameLineAndColumn) {
  absl::Status status = RenderError("ok\n  {% include 'other.jinja' %}");
  EXPECT_NE(status.message().find("line 2, column 6"), std::string::npos) << status;
  EXPECT_NE(status.message().find("include"), std::string::npos) << status;
  status = RenderError("{{ messages[0] + }}");
  EXPECT_NE(status.message().find("line 1, column 18"), std::string::npos) << status;
  status = RenderError("{% for m in messages %}");
  EXPECT_NE(status.message().find("endfor"), std::string::npos) << status;
  // Found by chat_template_fuzzer: a slice beside another subscript used to leave a null object.
  status = RenderError("{{ 'abc'[::,1] }}");
  EXPECT_NE(status.message().find("a slice must be the only subscript"), std::string::npos) << status;
  // Also a fuzzer find: a non-string separator or strip set used to be read as a string.
  status = RenderError("{{ 'a b'.split(true) }}");
  EXPECT_NE(status.message().find("must be str or None, not bool"), std::string::npos) << status;
  status = RenderError("{{ 'a b'.strip(1) }}");
  EXPECT_NE(status.message().find("strip arg must be None or str"), std::string::npos) << status;
}

TEST(ChatTemplateTest, EndlessRecursionAndRunawayOutputAreStopped) {
  absl::Status status = RenderError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("recursed deeper than"), std::string::npos) << status;
  ChatTemplateOptions options;
  options.limits.max_output_bytes = 1000;
  status = RenderError("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", options);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("exceeds the limit of 1000 bytes"), std::string::npos) << status;
}

// Fuzzer find: a macro recursing through 45 unary operators stays within max_call_depth for 45
// calls and overflowed the stack on the way; nesting is bounded on its own.
TEST(ChatTemplateTest, DeepNestingInsideRecursionIsStoppedBeforeTheStack) {
  const std::string pluses(45, '+');
  absl::Status status = RenderError("{% macro f(n) %}{% if n > 0 %}{{ " + pluses +
                                    " f(n / 1) }}{% endif %}{% endmacro %}{{ f(9) }}");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("nests deeper than 2000"), std::string::npos) << status;
  ChatTemplateOptions options;
  options.limits.max_nesting_depth = 10;
  status = RenderError("{{ " + std::string(20, '-') + "1 }}", options);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("nests deeper than 10"), std::string::npos) << status;
  absl::StatusOr<std::string> shallow =
      RenderChatTemplate("{{ " + std::string(4, '-') + "1 }}", R"([{"role": "user", "content": "Hi"}])", options);
  ASSERT_TRUE(shallow.ok()) << shallow.status();
  EXPECT_EQ(*shallow, "1");
}

// A width or precision beyond the output limit fails at once (fuzzer find: "%6666…d" padded for
// minutes); ordinary widths still format as Python does.
TEST(ChatTemplateTest, HugeFormatWidthsAreRefusedUpFront) {
  for (const char* source : {"{{ '%99999999999999999999999999d' % 1 }}", "{{ '%.99999999999f' % 1.5 }}",
                             "{{ '%99999999999g' % 1.5 }}", "{{ 'a'.center(99999999999) }}",
                             "{{ 'a'.zfill(99999999999) }}", "{{ 'a\nb' | indent(99999999999) }}"}) {
    absl::Status status = RenderError(source);
    EXPECT_NE(status.message().find("exceeds the rendered output limit"), std::string::npos) << source << ": " << status;
  }
  EXPECT_EQ(Render("{{ '%5d|%-4s|%.2f|%.3g|%06.1f' % (3, 'a', 1.5, 1234.5, -2.25) }}"), "    3|a   |1.50|1.23e+03|-002.2");
  EXPECT_EQ(Render("{{ 'ab'.center(6, '*') }}{{ '7'.zfill(3) }}"), "**ab**007");
}

TEST(ChatTemplateTest, UndefinedBehavesLikeJinja) {
  EXPECT_EQ(Render("[{{ missing }}]{{ missing is defined }}{{ missing|length }}{{ messages[0].nope }}{{ none.x }}"), "[]False0");
  absl::Status status = RenderError("{{ missing.attribute }}");
  EXPECT_NE(status.message().find("'missing' is undefined"), std::string::npos) << status;
}

}  // namespace
}  // namespace flotilla::chat_template
