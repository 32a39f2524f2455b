#include "services/preprocess/chat_template/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace flotilla::chat_template {
namespace {

absl::Status ErrorToStatus(const TemplateError& error) {
  std::string where = absl::StrCat("line ", error.location.line, ", column ", error.location.column);
  switch (error.kind) {
    case TemplateError::Kind::kSyntax:
      return absl::InvalidArgumentError(absl::StrCat("chat template syntax error at ", where, ": ", error.what()));
    case TemplateError::Kind::kRaised:
      return absl::InvalidArgumentError(absl::StrCat("chat template raised an exception at ", where, ": ", error.what()));
    case TemplateError::Kind::kLimit:
      return absl::ResourceExhaustedError(absl::StrCat("chat template stopped at ", where, ": ", error.what()));
    case TemplateError::Kind::kRuntime:
    default:
      return absl::InvalidArgumentError(absl::StrCat("chat template error at ", where, ": ", error.what()));
  }
}

absl::StatusOr<nlohmann::ordered_json> ParseJson(const std::string& text, const std::string& what) {
  nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return absl::InvalidArgumentError(absl::StrCat("RenderChatTemplate: ", what, " is not valid JSON"));
  return parsed;
}

// transformers' _alias_reasoning_fields: `reasoning_content` and `thinking` are filled from the
// first non-null of reasoning_content, thinking, reasoning.
Value AliasReasoning(const Value& message) {
  static const char* const kFields[] = {"reasoning_content", "thinking", "reasoning"};
  const Value* reasoning = nullptr;
  for (const char* field : kFields) {
    const Value* found = message.FindKey(Value(field));
    if (found != nullptr && !found->IsNone()) {
      reasoning = found;
      break;
    }
  }
  if (reasoning == nullptr) return message;
  // {"thinking": r, **message, "reasoning_content": r}: thinking keeps its place if present.
  Dict items;
  if (message.FindKey(Value("thinking")) == nullptr) items.emplace_back(Value("thinking"), *reasoning);
  for (const auto& [key, item] : message.AsDict()) {
    if (key.IsString() && key.AsString() == "thinking") {
      items.emplace_back(key, item);
    } else if (key.IsString() && key.AsString() == "reasoning_content") {
      items.emplace_back(key, *reasoning);
    } else {
      items.emplace_back(key, item);
    }
  }
  if (message.FindKey(Value("reasoning_content")) == nullptr) items.emplace_back(Value("reasoning_content"), *reasoning);
  return Value::FromDict(std::move(items));
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(const std::string& source) {
  try {
    return ChatTemplate(ParseTemplateOrThrow(source));
  } catch (const TemplateError& error) {
    return ErrorToStatus(error);
  }
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::string& messages_json, const ChatTemplateOptions& options) const {
  absl::StatusOr<nlohmann::ordered_json> messages = ParseJson(messages_json, "messages");
  if (!messages.ok()) return messages.status();
  if (!messages->is_array()) return absl::InvalidArgumentError("RenderChatTemplate: messages must be a JSON array of message objects");
  if (messages->empty()) {
    return absl::InvalidArgumentError("RenderChatTemplate: cannot apply a chat template to an empty conversation; provide at least one message");
  }
  // As apply_chat_template: keys whose value is null are dropped, reasoning fields are aliased.
  List conversation;
  for (const auto& message : *messages) {
    if (!message.is_object()) return absl::InvalidArgumentError("RenderChatTemplate: every message must be a JSON object");
    Dict items;
    for (const auto& [key, item] : message.items()) {
      if (!item.is_null()) items.emplace_back(Value(key), Value::FromJson(item));
    }
    conversation.push_back(AliasReasoning(Value::FromDict(std::move(items))));
  }
  std::vector<std::pair<std::string, Value>> context;
  auto set = [&](const std::string& name, Value value) {
    for (auto& [existing, slot] : context) {
      if (existing == name) {
        slot = std::move(value);
        return;
      }
    }
    context.emplace_back(name, std::move(value));
  };
  for (const auto& [name, token] : options.special_tokens) set(name, Value(token));
  if (options.extra_context_json) {
    absl::StatusOr<nlohmann::ordered_json> extra = ParseJson(*options.extra_context_json, "extra context");
    if (!extra.ok()) return extra.status();
    if (!extra->is_object()) return absl::InvalidArgumentError("RenderChatTemplate: extra context must be a JSON object");
    for (const auto& [key, item] : extra->items()) {
      if (key == "messages" || key == "tools" || key == "documents" || key == "add_generation_prompt") {
        return absl::InvalidArgumentError(absl::StrCat("RenderChatTemplate: extra context may not set '", key, "'; it has its own option"));
      }
      set(key, Value::FromJson(item));
    }
  }
  set("messages", Value::FromList(std::move(conversation)));
  Value tools = Value::None();
  if (options.tools_json) {
    absl::StatusOr<nlohmann::ordered_json> parsed = ParseJson(*options.tools_json, "tools");
    if (!parsed.ok()) return parsed.status();
    if (!parsed->is_array() && !parsed->is_null()) return absl::InvalidArgumentError("RenderChatTemplate: tools must be a JSON array");
    tools = Value::FromJson(*parsed);
  }
  set("tools", tools);
  Value documents = Value::None();
  if (options.documents_json) {
    absl::StatusOr<nlohmann::ordered_json> parsed = ParseJson(*options.documents_json, "documents");
    if (!parsed.ok()) return parsed.status();
    documents = Value::FromJson(*parsed);
  }
  set("documents", documents);
  set("add_generation_prompt", Value(options.add_generation_prompt));
  try {
    Renderer renderer(options.limits);
    return renderer.Render(*parsed_, std::move(context));
  } catch (const TemplateError& error) {
    return ErrorToStatus(error);
  }
}

absl::StatusOr<std::string> RenderChatTemplate(const std::string& template_source, const std::string& messages_json,
                                               const ChatTemplateOptions& options) {
  absl::StatusOr<ChatTemplate> parsed = ChatTemplate::Parse(template_source);
  if (!parsed.ok()) return parsed.status();
  return parsed->Render(messages_json, options);
}

absl::StatusOr<std::string> ModelChatTemplate::Select(const std::optional<std::string>& name, bool has_tools) const {
  if (name) {
    auto found = templates.find(*name);
    if (found != templates.end()) return found->second;
    // transformers treats an unknown name as the template text itself.
    return *name;
  }
  if (templates.empty()) {
    return absl::FailedPreconditionError("chat template: the model has no chat_template (tokenizer_config.json or chat_template.jinja)");
  }
  if (has_tools && templates.count("tool_use")) return templates.at("tool_use");
  if (templates.count("default")) return templates.at("default");
  std::string names;
  for (const auto& [template_name, text] : templates) names += (names.empty() ? "" : ", ") + template_name;
  return absl::FailedPreconditionError(
      absl::StrCat("chat template: the model has several chat templates and no default; pick one of: ", names));
}

absl::StatusOr<std::string> ModelChatTemplate::Render(const std::string& messages_json, ChatTemplateOptions options,
                                                      const std::optional<std::string>& name) const {
  absl::StatusOr<std::string> source = Select(name, options.tools_json.has_value());
  if (!source.ok()) return source.status();
  std::vector<std::pair<std::string, std::string>> tokens = special_tokens;
  tokens.insert(tokens.end(), options.special_tokens.begin(), options.special_tokens.end());
  options.special_tokens = std::move(tokens);
  return RenderChatTemplate(*source, messages_json, options);
}

namespace {

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("LoadChatTemplate: cannot read ", path.string()));
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

// A special token is written as a string or as an AddedToken object {"content": ...}.
std::optional<std::string> TokenText(const nlohmann::ordered_json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) return value["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

absl::StatusOr<ModelChatTemplate> LoadChatTemplate(const std::string& model_directory) {
  namespace fs = std::filesystem;
  fs::path directory(model_directory);
  if (!fs::is_directory(directory)) return absl::NotFoundError(absl::StrCat("LoadChatTemplate: ", model_directory, " is not a directory"));
  ModelChatTemplate model;
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  fs::path config_path = directory / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    absl::StatusOr<std::string> text = ReadFile(config_path);
    if (!text.ok()) return text.status();
    config = nlohmann::ordered_json::parse(*text, nullptr, false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("LoadChatTemplate: ", config_path.string(), " is not a JSON object"));
    }
  }
  if (config.contains("chat_template")) {
    const auto& templates = config["chat_template"];
    if (templates.is_string()) {
      model.templates["default"] = templates.get<std::string>();
    } else if (templates.is_array()) {
      for (const auto& entry : templates) {
        if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") || !entry["name"].is_string() ||
            !entry["template"].is_string()) {
          return absl::InvalidArgumentError("LoadChatTemplate: tokenizer_config.json chat_template list entries need 'name' and 'template' strings");
        }
        model.templates[entry["name"].get<std::string>()] = entry["template"].get<std::string>();
      }
    }
  }
  // chat_template.jinja and additional_chat_templates/*.jinja replace the config's templates.
  std::map<std::string, std::string> file_templates;
  if (fs::exists(directory / "chat_template.jinja")) {
    absl::StatusOr<std::string> text = ReadFile(directory / "chat_template.jinja");
    if (!text.ok()) return text.status();
    file_templates["default"] = *text;
  }
  fs::path extra_directory = directory / "additional_chat_templates";
  if (fs::is_directory(extra_directory)) {
    for (const auto& entry : fs::directory_iterator(extra_directory)) {
      if (entry.path().extension() != ".jinja") continue;
      absl::StatusOr<std::string> text = ReadFile(entry.path());
      if (!text.ok()) return text.status();
      file_templates[entry.path().stem().string()] = *text;
    }
  }
  if (!file_templates.empty()) model.templates = std::move(file_templates);

  static const char* const kSpecialTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"};
  nlohmann::ordered_json special_map = nlohmann::ordered_json::object();
  if (fs::exists(directory / "special_tokens_map.json")) {
    absl::StatusOr<std::string> text = ReadFile(directory / "special_tokens_map.json");
    if (text.ok()) {
      special_map = nlohmann::ordered_json::parse(*text, nullptr, false);
      if (special_map.is_discarded() || !special_map.is_object()) special_map = nlohmann::ordered_json::object();
    }
  }
  for (const char* name : kSpecialTokens) {
    std::optional<std::string> token;
    if (config.contains(name)) token = TokenText(config[name]);
    if (!token && special_map.contains(name)) token = TokenText(special_map[name]);
    if (token) model.special_tokens.emplace_back(name, *token);
  }
  return model;
}

}  // namespace flotilla::chat_template
