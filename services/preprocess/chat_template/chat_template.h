// Chat templates: turn a list of chat messages into the prompt text a model expects, exactly as
// transformers' `tokenizer.apply_chat_template(messages, tokenize=False, ...)` does (jinja2 with
// transformers' sandboxed environment and helpers), without Python.
//
//   absl::StatusOr<std::string> prompt = RenderChatTemplate(
//       "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}",
//       R"([{"role": "user", "content": "Hi"}])", {.add_generation_prompt = true});
//
//   absl::StatusOr<ModelChatTemplate> model = LoadChatTemplate("/models/smollm2");  // from a model dir
//   prompt = model->Render(messages_json, {.add_generation_prompt = true});
//
// Errors: a template syntax error gives InvalidArgument naming line and column; `raise_exception`
// in the template gives InvalidArgument with the template's message; a template that exceeds its
// limits (output size, recursion depth, steps) gives ResourceExhausted. A parsed ChatTemplate is
// immutable; Render may be called from several threads at once.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "services/preprocess/chat_template/renderer.h"
#include "services/preprocess/chat_template/syntax.h"

namespace flotilla::chat_template {

struct ChatTemplateOptions {
  bool add_generation_prompt = false;
  // A JSON array of tool schemas (transformers' `tools=`); nullopt renders `tools` as None.
  std::optional<std::string> tools_json;
  // A JSON array of documents (transformers' `documents=`); nullopt renders `documents` as None.
  std::optional<std::string> documents_json;
  // Named special tokens as the tokenizer passes them (bos_token, eos_token, ...).
  std::vector<std::pair<std::string, std::string>> special_tokens;
  // A JSON object of extra template variables (transformers' **kwargs); they override special tokens.
  std::optional<std::string> extra_context_json;
  RenderLimits limits;
};

class ChatTemplate {
 public:
  static absl::StatusOr<ChatTemplate> Parse(const std::string& source);

  // `messages_json` is a JSON array of message objects.
  absl::StatusOr<std::string> Render(const std::string& messages_json, const ChatTemplateOptions& options) const;

 private:
  explicit ChatTemplate(std::shared_ptr<const Template> parsed) : parsed_(std::move(parsed)) {}
  std::shared_ptr<const Template> parsed_;
};

// Parse and render once.
absl::StatusOr<std::string> RenderChatTemplate(const std::string& template_source, const std::string& messages_json,
                                               const ChatTemplateOptions& options);

// A model directory's chat templates and the special tokens its tokenizer passes to them.
struct ModelChatTemplate {
  // Named templates: "default" for a single template, plus any named ones (tool_use, rag, ...).
  std::map<std::string, std::string> templates;
  std::vector<std::pair<std::string, std::string>> special_tokens;

  // transformers' get_chat_template: a name picks a template; otherwise `tool_use` when tools are
  // given and the model has one, else `default`.
  absl::StatusOr<std::string> Select(const std::optional<std::string>& name, bool has_tools) const;
  // Select, then render with this model's special tokens added to `options`.
  absl::StatusOr<std::string> Render(const std::string& messages_json, ChatTemplateOptions options,
                                     const std::optional<std::string>& name = std::nullopt) const;
};

// Reads chat_template.jinja, additional_chat_templates/*.jinja and tokenizer_config.json (its
// `chat_template` string or list of {name, template}, and its special tokens) as transformers'
// from_pretrained does.
absl::StatusOr<ModelChatTemplate> LoadChatTemplate(const std::string& model_directory);

}  // namespace flotilla::chat_template
