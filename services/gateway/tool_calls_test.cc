#include "services/gateway/tool_calls.h"

#include <string>

#include "gtest/gtest.h"

namespace flotilla::gateway {
namespace {

TEST(ParseToolCallsTest, OneCall) {
  ParsedToolCalls parsed =
      ParseToolCalls("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>");
  EXPECT_EQ(parsed.content, "");
  ASSERT_EQ(parsed.tool_calls.size(), 1u);
  EXPECT_EQ(parsed.tool_calls[0].name, "get_weather");
  EXPECT_EQ(parsed.tool_calls[0].arguments, R"({"city":"Paris"})");
  EXPECT_EQ(parsed.tool_calls[0].id.rfind("call_", 0), 0u);
  EXPECT_EQ(parsed.tool_calls[0].id.size(), 5u + 24u);
}

TEST(ParseToolCallsTest, TwoCallsWithTextBefore) {
  ParsedToolCalls parsed = ParseToolCalls(
      "Let me check both.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n"
      "<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": [1, 2]}}\n</tool_call>\n");
  EXPECT_EQ(parsed.content, "Let me check both.\n");
  ASSERT_EQ(parsed.tool_calls.size(), 2u);
  EXPECT_EQ(parsed.tool_calls[0].name, "a");
  EXPECT_EQ(parsed.tool_calls[0].arguments, "{}");
  EXPECT_EQ(parsed.tool_calls[1].name, "b");
  EXPECT_EQ(parsed.tool_calls[1].arguments, R"({"x":[1,2]})");
  EXPECT_NE(parsed.tool_calls[0].id, parsed.tool_calls[1].id);
}

TEST(ParseToolCallsTest, StringArgumentsAreKeptAndMissingOnesAreEmptyObject) {
  ParsedToolCalls parsed = ParseToolCalls(
      "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"q\\\": 1}\"}</tool_call>"
      "<tool_call>{\"name\": \"g\"}</tool_call>");
  ASSERT_EQ(parsed.tool_calls.size(), 2u);
  EXPECT_EQ(parsed.tool_calls[0].arguments, R"({"q": 1})");
  EXPECT_EQ(parsed.tool_calls[1].arguments, "{}");
}

TEST(ParseToolCallsTest, MalformedJsonStaysText) {
  const std::string text = "Hi <tool_call>\n{\"name\": \"f\", \"arguments\": {oops}\n</tool_call>";
  ParsedToolCalls parsed = ParseToolCalls(text);
  EXPECT_EQ(parsed.content, text);
  EXPECT_TRUE(parsed.tool_calls.empty());
}

TEST(ParseToolCallsTest, CallWithoutNameStaysText) {
  const std::string text = "<tool_call>{\"arguments\": {}}</tool_call>";
  EXPECT_EQ(ParseToolCalls(text).content, text);
}

TEST(ParseToolCallsTest, UnterminatedCallStaysText) {
  const std::string text = "ok <tool_call>\n{\"name\": \"f\", \"argu";
  ParsedToolCalls parsed = ParseToolCalls(text);
  EXPECT_EQ(parsed.content, text);
  EXPECT_TRUE(parsed.tool_calls.empty());
}

TEST(ParseToolCallsTest, TextAfterACallIsContentButWhitespaceIsNot) {
  ParsedToolCalls parsed = ParseToolCalls("<tool_call>{\"name\": \"f\"}</tool_call>\n  \nDone.");
  EXPECT_EQ(parsed.content, "\n  \nDone.");
  ASSERT_EQ(parsed.tool_calls.size(), 1u);
  parsed = ParseToolCalls("<tool_call>{\"name\": \"f\"}</tool_call>\n  \n");
  EXPECT_EQ(parsed.content, "");
}

TEST(ParseToolCallsTest, PlainTextAndLookalikes) {
  EXPECT_EQ(ParseToolCalls("a < b and <tool is fine").content, "a < b and <tool is fine");
  EXPECT_EQ(ParseToolCalls("ends with <tool_ca").content, "ends with <tool_ca");
}

// The streaming parser, split at every byte position (and fed byte by byte), gives the whole
// text's result.
TEST(ToolCallStreamParserTest, EverySplitGivesTheSameResultAsTheWhole) {
  const std::string text =
      "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>\n"
      "<tool_call>\n{bad json}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>\n"
      "tail <tool_call";
  const ParsedToolCalls whole = ParseToolCalls(text);
  ASSERT_EQ(whole.tool_calls.size(), 2u);
  // The newline before the malformed block went with the call before it (whitespace between a call
  // and the next tag is dropped), the one after the last call is kept with the text it precedes.
  EXPECT_EQ(whole.content, "Checking.\n<tool_call>\n{bad json}\n</tool_call>\n\ntail <tool_call");

  auto check = [&](const ParsedToolCalls& streamed, const std::string& label) {
    EXPECT_EQ(streamed.content, whole.content) << label;
    ASSERT_EQ(streamed.tool_calls.size(), whole.tool_calls.size()) << label;
    for (size_t i = 0; i < whole.tool_calls.size(); ++i) {
      EXPECT_EQ(streamed.tool_calls[i].name, whole.tool_calls[i].name) << label;
      EXPECT_EQ(streamed.tool_calls[i].arguments, whole.tool_calls[i].arguments) << label;
    }
  };
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    ToolCallStreamParser parser;
    ParsedToolCalls streamed;
    for (const std::string& piece : {text.substr(0, cut), text.substr(cut)}) {
      ParsedToolCalls delta = parser.Feed(piece);
      streamed.content += delta.content;
      for (ToolCall& call : delta.tool_calls) streamed.tool_calls.push_back(call);
    }
    ParsedToolCalls rest = parser.Finish();
    streamed.content += rest.content;
    for (ToolCall& call : rest.tool_calls) streamed.tool_calls.push_back(call);
    check(streamed, "cut at " + std::to_string(cut));
  }
  ToolCallStreamParser parser;
  ParsedToolCalls streamed;
  for (char byte : text) {
    ParsedToolCalls delta = parser.Feed(std::string(1, byte));
    streamed.content += delta.content;
    for (ToolCall& call : delta.tool_calls) streamed.tool_calls.push_back(call);
  }
  streamed.content += parser.Finish().content;
  check(streamed, "byte by byte");
  EXPECT_EQ(parser.num_tool_calls(), 2);
}

TEST(ToolCallStreamParserTest, ContentBeforeACallIsReleasedEarlyAndCallsComeOutWhole) {
  ToolCallStreamParser parser;
  EXPECT_EQ(parser.Feed("Sure. <tool").content, "Sure. ");
  ParsedToolCalls middle = parser.Feed("_call>{\"name\": \"f\", ");
  EXPECT_EQ(middle.content, "");
  EXPECT_TRUE(middle.tool_calls.empty());
  ParsedToolCalls end = parser.Feed("\"arguments\": {}}</tool_call>");
  ASSERT_EQ(end.tool_calls.size(), 1u);
  EXPECT_EQ(end.tool_calls[0].name, "f");
  EXPECT_EQ(parser.Finish().content, "");
}

}  // namespace
}  // namespace flotilla::gateway
