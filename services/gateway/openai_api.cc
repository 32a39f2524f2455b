#include "services/gateway/openai_api.h"

#include <algorithm>
#include <cmath>
#include <bit>
#include <cstring>
#include <limits>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flotilla::gateway {
namespace {

// Ordered: tools and messages reach the chat template with their keys in the client's order, as
// transformers' tojson renders them (a sorted object changes the prompt).
using json = nlohmann::ordered_json;

// Returns from the enclosing parser when a check produced an error.
#define FLOTILLA_RETURN_IF_API_ERROR(expression)                         \
  if (std::optional<ApiError> api_error_ = (expression); api_error_) { \
    return *std::move(api_error_);                                      \
  }

std::string RandomHex(int length) {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  text.reserve(length);
  uint64_t bits = 0;
  for (int i = 0; i < length; ++i) {
    if (i % 16 == 0) bits = generator();
    text += kDigits[bits & 0xf];
    bits >>= 4;
  }
  return text;
}

std::string TypeName(const json& value) {
  if (value.is_string()) return "a string";
  if (value.is_boolean()) return "a boolean";
  if (value.is_number_integer() || value.is_number_unsigned()) return "an integer";
  if (value.is_number()) return "a number";
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return "null";
}

ApiError WrongType(const std::string& name, const std::string& expected, const json& value) {
  return InvalidRequestError(
      absl::StrCat("Invalid type for '", name, "': expected ", expected, ", but got ", TypeName(value), " instead."),
      std::string(name));
}

// The top-level object of a request, with the keys each parser has claimed, so that whatever is
// left over is an unrecognized argument.
class Fields {
 public:
  explicit Fields(const json& object) : object_(object) {}

  // The value, or nullptr when absent or null (clients send null for "not given").
  const json* Get(const std::string& name) {
    known_.insert(std::string(name));
    auto found = object_.find(std::string(name));
    if (found == object_.end() || found->is_null()) return nullptr;
    return &*found;
  }
  void Ignore(std::initializer_list<std::string_view> names) {
    for (std::string_view name : names) known_.insert(std::string(name));
  }
  std::optional<ApiError> CheckNoUnknown() const {
    for (auto item = object_.begin(); item != object_.end(); ++item) {
      if (!known_.contains(item.key())) {
        return InvalidRequestError(absl::StrCat("Unrecognized request argument supplied: ", item.key()));
      }
    }
    return std::nullopt;
  }

 private:
  const json& object_;
  absl::flat_hash_set<std::string> known_;
};

std::optional<ApiError> ReadBool(Fields& fields, const std::string& name, bool& out) {
  const json* value = fields.Get(name);
  if (value == nullptr) return std::nullopt;
  if (!value->is_boolean()) return WrongType(name, "a boolean", *value);
  out = value->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> ReadOptionalBool(Fields& fields, const std::string& name, std::optional<bool>& out) {
  const json* value = fields.Get(name);
  if (value == nullptr) return std::nullopt;
  if (!value->is_boolean()) return WrongType(name, "a boolean", *value);
  out = value->get<bool>();
  return std::nullopt;
}

// Integers; a float with an integral value (5.0) is accepted, as pydantic does.
std::optional<ApiError> IntegerValue(const std::string& name, const json& value, int64_t& out) {
  if (value.is_number_integer()) {
    out = value.get<int64_t>();
    return std::nullopt;
  }
  if (value.is_number_unsigned()) {
    const uint64_t unsigned_value = value.get<uint64_t>();
    if (unsigned_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return InvalidRequestError(absl::StrCat("Invalid '", name, "': ", unsigned_value, " is out of range."),
                                 std::string(name));
    }
    out = static_cast<int64_t>(unsigned_value);
    return std::nullopt;
  }
  if (value.is_number_float()) {
    const double number = value.get<double>();
    if (std::isfinite(number) && std::floor(number) == number && std::fabs(number) < 9.0e15) {
      out = static_cast<int64_t>(number);
      return std::nullopt;
    }
  }
  return WrongType(name, "an integer", value);
}

std::optional<ApiError> ReadInteger(Fields& fields, const std::string& name, std::optional<int64_t>& out) {
  const json* value = fields.Get(name);
  if (value == nullptr) return std::nullopt;
  int64_t integer = 0;
  FLOTILLA_RETURN_IF_API_ERROR(IntegerValue(name, *value, integer));
  out = integer;
  return std::nullopt;
}

std::optional<ApiError> ReadNumber(Fields& fields, const std::string& name, std::optional<double>& out) {
  const json* value = fields.Get(name);
  if (value == nullptr) return std::nullopt;
  if (!value->is_number()) return WrongType(name, "a number", *value);
  out = value->get<double>();
  return std::nullopt;
}

std::optional<ApiError> ReadString(Fields& fields, const std::string& name, std::optional<std::string>& out) {
  const json* value = fields.Get(name);
  if (value == nullptr) return std::nullopt;
  if (!value->is_string()) return WrongType(name, "a string", *value);
  out = value->get<std::string>();
  return std::nullopt;
}

std::string FormatNumber(double value) {
  if (std::floor(value) == value && std::fabs(value) < 1e15) return absl::StrCat(static_cast<int64_t>(value));
  return absl::StrCat(value);
}

// OpenAI's wording: "Invalid 'temperature': decimal above maximum value. Expected a value <= 2,
// but got 3 instead."
std::optional<ApiError> CheckAtLeast(const std::string& name, double value, double minimum) {
  if (value >= minimum) return std::nullopt;
  return InvalidRequestError(absl::StrCat("Invalid '", name, "': value below minimum. Expected a value >= ",
                                          FormatNumber(minimum), ", but got ", FormatNumber(value), " instead."),
                             std::string(name));
}

std::optional<ApiError> CheckAtMost(const std::string& name, double value, double maximum) {
  if (value <= maximum) return std::nullopt;
  return InvalidRequestError(absl::StrCat("Invalid '", name, "': value above maximum. Expected a value <= ",
                                          FormatNumber(maximum), ", but got ", FormatNumber(value), " instead."),
                             std::string(name));
}

std::optional<ApiError> CheckRange(const std::string& name, double value, double minimum, double maximum) {
  FLOTILLA_RETURN_IF_API_ERROR(CheckAtLeast(name, value, minimum));
  return CheckAtMost(name, value, maximum);
}

bool IsDefaultValue(const json& value) {
  return value.is_null() || (value.is_boolean() && !value.get<bool>()) ||
         ((value.is_array() || value.is_object() || value.is_string()) && value.empty());
}

// Fields we accept only at their default (null, false, empty): they would change the output in
// ways we do not implement, so a request that sets them fails loudly instead of being ignored.
std::optional<ApiError> RejectUnlessDefault(Fields& fields, const std::string& name, const std::string& hint = "") {
  const json* value = fields.Get(name);
  if (value == nullptr || IsDefaultValue(*value)) return std::nullopt;
  return InvalidRequestError(absl::StrCat("'", name, "' is not supported by this server", hint.empty() ? "" : "; ",
                                          hint, "."),
                             std::string(name));
}

// Documented fields that cannot change the output here: accepted and ignored.
const std::initializer_list<std::string_view> kIgnoredFields = {
    // OpenAI
    "user", "metadata", "store", "service_tier", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "safety_identifier", "reasoning_effort", "verbosity", "prediction",
    "web_search_options", "moderation", "modalities",
    // vLLM
    "spaces_between_special_tokens", "length_penalty", "cache_salt", "return_token_ids",
    "return_tokens_as_token_ids", "stream_interval", "vllm_xargs", "kv_transfer_params", "mm_processor_kwargs"};

// vLLM extensions we do not implement.
const std::initializer_list<std::string_view> kUnsupportedExtensions = {
    "use_beam_search", "prompt_logprobs", "allowed_token_ids", "bad_words", "structured_outputs", "guided_json",
    "guided_regex", "guided_choice", "guided_grammar", "truncate_prompt_tokens", "logits_processors"};

std::optional<ApiError> ReadModel(Fields& fields, std::string& model) {
  const json* value = fields.Get("model");
  if (value == nullptr) return InvalidRequestError("you must provide a model parameter", "model");
  if (!value->is_string()) return WrongType("model", "a string", *value);
  model = value->get<std::string>();
  if (model.empty()) return InvalidRequestError("you must provide a model parameter", "model");
  return std::nullopt;
}

std::optional<ApiError> ReadTokenIds(const std::string& name, const json& array, std::vector<int32_t>& ids) {
  for (size_t i = 0; i < array.size(); ++i) {
    const std::string element_name = absl::StrCat(name, "[", i, "]");
    int64_t id = 0;
    FLOTILLA_RETURN_IF_API_ERROR(IntegerValue(element_name, array[i], id));
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange(element_name, static_cast<double>(id), 0,
                                            std::numeric_limits<int32_t>::max()));
    ids.push_back(static_cast<int32_t>(id));
  }
  return std::nullopt;
}

bool IsTokenIdArray(const json& value) {
  return value.is_array() && std::all_of(value.begin(), value.end(), [](const json& element) {
           return element.is_number();
         });
}

// The fields /v1/chat/completions and /v1/completions share: sampling, stop, streaming, vLLM's
// extensions.
std::optional<ApiError> ReadSharedGenerationFields(Fields& fields, GenerationRequest& request) {
  FLOTILLA_RETURN_IF_API_ERROR(ReadModel(fields, request.model));

  std::optional<int64_t> n;
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "n", n));
  if (n.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("n", static_cast<double>(*n), 1, kMaxChoices));
    request.n = static_cast<int>(*n);
  }

  if (const json* stop = fields.Get("stop")) {
    if (stop->is_string()) {
      request.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (size_t i = 0; i < stop->size(); ++i) {
        if (!(*stop)[i].is_string()) return WrongType(absl::StrCat("stop[", i, "]"), "a string", (*stop)[i]);
        request.stop.push_back((*stop)[i].get<std::string>());
      }
    } else {
      return WrongType("stop", "a string or an array of strings", *stop);
    }
    if (request.stop.size() > static_cast<size_t>(kMaxStopStrings)) {
      return InvalidRequestError(absl::StrCat("Invalid 'stop': array too long. Expected an array with at most ",
                                              kMaxStopStrings, " elements, but got ", request.stop.size(),
                                              " instead."),
                                 "stop");
    }
    for (const std::string& stop_string : request.stop) {
      if (stop_string.empty()) return InvalidRequestError("Invalid 'stop': stop strings must not be empty.", "stop");
    }
  }

  std::optional<double> number;
  FLOTILLA_RETURN_IF_API_ERROR(ReadNumber(fields, "temperature", number));
  if (number.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("temperature", *number, 0, 2));
    request.temperature = static_cast<float>(*number);
  }
  number.reset();
  FLOTILLA_RETURN_IF_API_ERROR(ReadNumber(fields, "top_p", number));
  if (number.has_value()) {
    if (*number <= 0) {
      return InvalidRequestError(absl::StrCat("Invalid 'top_p': expected a value in (0, 1], but got ",
                                              FormatNumber(*number), " instead."),
                                 "top_p");
    }
    FLOTILLA_RETURN_IF_API_ERROR(CheckAtMost("top_p", *number, 1));
    request.top_p = static_cast<float>(*number);
  }
  number.reset();
  FLOTILLA_RETURN_IF_API_ERROR(ReadNumber(fields, "min_p", number));
  if (number.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("min_p", *number, 0, 1));
    request.min_p = static_cast<float>(*number);
  }
  number.reset();
  FLOTILLA_RETURN_IF_API_ERROR(ReadNumber(fields, "repetition_penalty", number));
  if (number.has_value()) {
    if (*number <= 0) {
      return InvalidRequestError(absl::StrCat("Invalid 'repetition_penalty': expected a value > 0, but got ",
                                              FormatNumber(*number), " instead."),
                                 "repetition_penalty");
    }
    request.repetition_penalty = static_cast<float>(*number);
  }
  for (auto [name, target] : {std::pair<std::string, float*>{"presence_penalty", &request.presence_penalty},
                              std::pair<std::string, float*>{"frequency_penalty", &request.frequency_penalty}}) {
    number.reset();
    FLOTILLA_RETURN_IF_API_ERROR(ReadNumber(fields, name, number));
    if (number.has_value()) {
      FLOTILLA_RETURN_IF_API_ERROR(CheckRange(name, *number, -2, 2));
      *target = static_cast<float>(*number);
    }
  }

  std::optional<int64_t> integer;
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "top_k", integer));
  if (integer.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("top_k", static_cast<double>(*integer), -1,
                                            std::numeric_limits<int32_t>::max()));
    request.top_k = static_cast<int>(*integer);
  }
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "seed", request.seed));
  integer.reset();
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "min_tokens", integer));
  if (integer.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("min_tokens", static_cast<double>(*integer), 0,
                                            std::numeric_limits<int32_t>::max()));
    request.min_tokens = static_cast<int>(*integer);
  }
  integer.reset();
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "priority", integer));
  if (integer.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("priority", static_cast<double>(*integer),
                                            std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
    request.priority = static_cast<int>(*integer);
  }

  if (const json* logit_bias = fields.Get("logit_bias")) {
    if (!logit_bias->is_object()) return WrongType("logit_bias", "an object", *logit_bias);
    for (auto item = logit_bias->begin(); item != logit_bias->end(); ++item) {
      int32_t token_id = 0;
      if (!absl::SimpleAtoi(item.key(), &token_id) || token_id < 0) {
        return InvalidRequestError(
            absl::StrCat("Invalid key in 'logit_bias': expected a token id (a non-negative integer), but got '",
                         item.key(), "' instead."),
            "logit_bias");
      }
      const std::string name = absl::StrCat("logit_bias.", item.key());
      if (!item.value().is_number()) return WrongType(name, "a number", item.value());
      const double bias = item.value().get<double>();
      FLOTILLA_RETURN_IF_API_ERROR(CheckRange(name, bias, -100, 100));
      request.logit_bias[token_id] = static_cast<float>(bias);
    }
  }

  if (const json* stop_token_ids = fields.Get("stop_token_ids")) {
    if (!stop_token_ids->is_array()) return WrongType("stop_token_ids", "an array of integers", *stop_token_ids);
    FLOTILLA_RETURN_IF_API_ERROR(ReadTokenIds("stop_token_ids", *stop_token_ids, request.stop_token_ids));
  }

  FLOTILLA_RETURN_IF_API_ERROR(ReadBool(fields, "stream", request.stream));
  if (const json* stream_options = fields.Get("stream_options")) {
    if (!request.stream) {
      return InvalidRequestError("Stream options can only be defined when `stream=True`.", "stream_options");
    }
    if (!stream_options->is_object()) return WrongType("stream_options", "an object", *stream_options);
    Fields options(*stream_options);
    std::optional<bool> flag;
    FLOTILLA_RETURN_IF_API_ERROR(ReadOptionalBool(options, "include_usage", flag));
    request.include_usage = flag.value_or(false);
    flag.reset();
    FLOTILLA_RETURN_IF_API_ERROR(ReadOptionalBool(options, "continuous_usage_stats", flag));
    request.continuous_usage_stats = flag.value_or(false);
    options.Ignore({"include_obfuscation"});
    if (std::optional<ApiError> unknown = options.CheckNoUnknown()) {
      unknown->message = absl::StrCat(unknown->message, " (in stream_options)");
      unknown->param = "stream_options";
      return unknown;
    }
  }

  FLOTILLA_RETURN_IF_API_ERROR(ReadBool(fields, "ignore_eos", request.ignore_eos));
  FLOTILLA_RETURN_IF_API_ERROR(ReadBool(fields, "skip_special_tokens", request.skip_special_tokens));
  FLOTILLA_RETURN_IF_API_ERROR(ReadBool(fields, "include_stop_str_in_output", request.include_stop_str_in_output));
  FLOTILLA_RETURN_IF_API_ERROR(ReadOptionalBool(fields, "add_special_tokens", request.add_special_tokens));
  std::optional<std::string> request_id;
  FLOTILLA_RETURN_IF_API_ERROR(ReadString(fields, "request_id", request_id));
  request.request_id = request_id.value_or("");

  fields.Ignore(kIgnoredFields);
  for (std::string_view name : kUnsupportedExtensions) {
    FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, std::string(name)));
  }
  return std::nullopt;
}

// max_tokens / max_completion_tokens: at least 1.
std::optional<ApiError> ReadMaxTokens(Fields& fields, const std::string& name, std::optional<int>& out) {
  std::optional<int64_t> value;
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, name, value));
  if (!value.has_value()) return std::nullopt;
  FLOTILLA_RETURN_IF_API_ERROR(CheckRange(name, static_cast<double>(*value), 1, std::numeric_limits<int32_t>::max()));
  out = static_cast<int>(*value);
  return std::nullopt;
}

std::optional<ApiError> CheckMinTokens(const GenerationRequest& request) {
  if (request.max_tokens.has_value() && request.min_tokens > *request.max_tokens) {
    return InvalidRequestError(absl::StrCat("Invalid 'min_tokens': expected at most max_tokens (", *request.max_tokens,
                                            "), but got ", request.min_tokens, " instead."),
                               "min_tokens");
  }
  return std::nullopt;
}

constexpr std::string_view kRoles[] = {"system", "developer", "user", "assistant", "tool", "function"};

// A message's content as one string: text parts joined with "\n" (vLLM's rule for templates that
// take string content). Non-text parts are rejected: the served models are text-only.
std::optional<ApiError> NormalizeContent(const std::string& name, const json& content, std::string_view role,
                                         json& normalized) {
  if (content.is_string()) {
    normalized = content;
    return std::nullopt;
  }
  if (!content.is_array()) return WrongType(name, "a string or an array of content parts", content);
  std::vector<std::string> texts;
  for (size_t j = 0; j < content.size(); ++j) {
    const json& part = content[j];
    const std::string part_name = absl::StrCat(name, "[", j, "]");
    if (!part.is_object()) return WrongType(part_name, "an object", part);
    auto type = part.find("type");
    if (type == part.end() || !type->is_string()) {
      return InvalidRequestError(absl::StrCat("Missing required parameter: '", part_name, ".type'."),
                                 part_name + ".type");
    }
    const std::string& type_name = type->get_ref<const std::string&>();
    const char* text_key = type_name == "text" ? "text" : (type_name == "refusal" && role == "assistant") ? "refusal"
                                                                                                           : nullptr;
    if (text_key == nullptr) {
      if (type_name == "image_url" || type_name == "input_audio" || type_name == "file" ||
          type_name == "video_url" || type_name == "audio_url" || type_name == "input_image") {
        return InvalidRequestError(absl::StrCat("Invalid '", part_name, ".type': content parts of type '", type_name,
                                                "' are not supported: the models served here take text only."),
                                   part_name + ".type");
      }
      return InvalidRequestError(absl::StrCat("Invalid value for '", part_name, ".type': '", type_name,
                                              "' is not a known content part type."),
                                 part_name + ".type");
    }
    auto text = part.find(text_key);
    if (text == part.end() || !text->is_string()) {
      return InvalidRequestError(absl::StrCat("Missing required parameter: '", part_name, ".", text_key, "'."),
                                 absl::StrCat(part_name, ".", text_key));
    }
    texts.push_back(text->get<std::string>());
  }
  normalized = absl::StrJoin(texts, "\n");
  return std::nullopt;
}

std::optional<ApiError> NormalizeMessages(const json& messages, json& normalized) {
  if (!messages.is_array()) return WrongType("messages", "an array", messages);
  if (messages.empty()) {
    return InvalidRequestError("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                               "messages");
  }
  normalized = json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string name = absl::StrCat("messages[", i, "]");
    const json& message = messages[i];
    if (!message.is_object()) return WrongType(name, "an object", message);
    auto role = message.find("role");
    if (role == message.end() || role->is_null()) {
      return InvalidRequestError(absl::StrCat("Missing required parameter: '", name, ".role'."), name + ".role");
    }
    if (!role->is_string()) return WrongType(name + ".role", "a string", *role);
    const std::string& role_name = role->get_ref<const std::string&>();
    if (std::find(std::begin(kRoles), std::end(kRoles), role_name) == std::end(kRoles)) {
      return InvalidRequestError(absl::StrCat("Invalid value for '", name, ".role': '", role_name,
                                              "' is not one of 'system', 'developer', 'user', 'assistant', 'tool', "
                                              "'function'."),
                                 name + ".role");
    }
    json copy = message;
    auto content = message.find("content");
    if (content == message.end() || content->is_null()) {
      if (role_name != "assistant") {
        return InvalidRequestError(absl::StrCat("Missing required parameter: '", name, ".content'."),
                                   name + ".content");
      }
      copy["content"] = nullptr;
    } else {
      FLOTILLA_RETURN_IF_API_ERROR(NormalizeContent(name + ".content", *content, role_name, copy["content"]));
    }
    if (auto name_field = message.find("name"); name_field != message.end() && !name_field->is_null() &&
                                                 !name_field->is_string()) {
      return WrongType(name + ".name", "a string", *name_field);
    }
    if (auto tool_calls = message.find("tool_calls"); tool_calls != message.end() && !tool_calls->is_null()) {
      if (!tool_calls->is_array()) return WrongType(name + ".tool_calls", "an array", *tool_calls);
      for (size_t k = 0; k < tool_calls->size(); ++k) {
        const std::string call_name = absl::StrCat(name, ".tool_calls[", k, "]");
        const json& call = (*tool_calls)[k];
        if (!call.is_object()) return WrongType(call_name, "an object", call);
        auto function = call.find("function");
        if (function == call.end() || !function->is_object() || !function->contains("name") ||
            !(*function)["name"].is_string()) {
          return InvalidRequestError(absl::StrCat("Missing required parameter: '", call_name, ".function.name'."),
                                     call_name + ".function.name");
        }
        // Templates render arguments with tojson, so they want the object, not OpenAI's string.
        auto arguments = function->find("arguments");
        if (arguments != function->end() && arguments->is_string()) {
          json parsed = json::parse(arguments->get_ref<const std::string&>(), nullptr, /*allow_exceptions=*/false);
          if (!parsed.is_discarded()) copy["tool_calls"][k]["function"]["arguments"] = std::move(parsed);
        }
      }
    }
    normalized.push_back(std::move(copy));
  }
  return std::nullopt;
}

std::optional<ApiError> ReadTools(Fields& fields, GenerationRequest& request) {
  if (const json* tools = fields.Get("tools")) {
    if (!tools->is_array()) return WrongType("tools", "an array", *tools);
    for (size_t i = 0; i < tools->size(); ++i) {
      const std::string name = absl::StrCat("tools[", i, "]");
      const json& tool = (*tools)[i];
      if (!tool.is_object()) return WrongType(name, "an object", tool);
      if (tool.value("type", std::string()) != "function") {
        return InvalidRequestError(absl::StrCat("Invalid value for '", name,
                                                ".type': only 'function' tools are supported."),
                                   name + ".type");
      }
      auto function = tool.find("function");
      if (function == tool.end() || !function->is_object()) {
        return InvalidRequestError(absl::StrCat("Missing required parameter: '", name, ".function'."),
                                   name + ".function");
      }
      auto function_name = function->find("name");
      if (function_name == function->end() || !function_name->is_string() || function_name->empty()) {
        return InvalidRequestError(absl::StrCat("Missing required parameter: '", name, ".function.name'."),
                                   name + ".function.name");
      }
    }
    request.tools = *tools;
  }
  const bool has_tools = request.tools.is_array() && !request.tools.empty();
  request.tool_choice = has_tools ? "auto" : "none";
  if (const json* tool_choice = fields.Get("tool_choice")) {
    if (tool_choice->is_string()) {
      const std::string& choice = tool_choice->get_ref<const std::string&>();
      if (choice == "none" || choice == "auto") {
        if (choice == "auto" && !has_tools) {
          return InvalidRequestError("Invalid 'tool_choice': 'auto' requires 'tools'.", "tool_choice");
        }
        request.tool_choice = choice;
      } else if (choice == "required") {
        return InvalidRequestError(
            "Invalid 'tool_choice': 'required' is not supported by this server (it needs constrained decoding); "
            "use 'auto'.",
            "tool_choice");
      } else {
        return InvalidRequestError(absl::StrCat("Invalid value for 'tool_choice': '", choice,
                                                "' is not one of 'none', 'auto', 'required'."),
                                   "tool_choice");
      }
    } else if (tool_choice->is_object()) {
      return InvalidRequestError(
          "Invalid 'tool_choice': naming a function is not supported by this server (it needs constrained "
          "decoding); use 'auto'.",
          "tool_choice");
    } else {
      return WrongType("tool_choice", "a string or an object", *tool_choice);
    }
  }
  return std::nullopt;
}

std::optional<ApiError> ParseBodyObject(std::string_view body, json& parsed) {
  parsed = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return InvalidRequestError(
        "We could not parse the JSON body of your request. The request body must be valid JSON (see "
        "https://platform.openai.com/docs/api-reference).");
  }
  if (!parsed.is_object()) {
    return InvalidRequestError(absl::StrCat("Invalid request body: expected a JSON object, but got ",
                                            TypeName(parsed), " instead."));
  }
  return std::nullopt;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Errors

ApiError InvalidRequestError(std::string message, std::string param) {
  return ApiError{.http_status = 400, .message = std::move(message), .type = "invalid_request_error",
                  .param = std::move(param), .code = ""};
}

ApiError ModelNotFoundError(std::string_view model) {
  return ApiError{.http_status = 404, .message = absl::StrCat("The model `", std::string(model), "` does not exist."),
                  .type = "invalid_request_error", .param = "model", .code = "model_not_found"};
}

ApiError ApiErrorFromStatus(const absl::Status& status) {
  ApiError error;
  error.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      error.http_status = 400;
      break;
    case absl::StatusCode::kNotFound:
      error.http_status = 404;
      break;
    case absl::StatusCode::kResourceExhausted:
      error.http_status = 429;
      error.type = "rate_limit_exceeded";
      break;
    case absl::StatusCode::kUnavailable:
      error.http_status = 503;
      error.type = "server_error";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      error.http_status = 504;
      error.type = "server_error";
      break;
    case absl::StatusCode::kUnimplemented:
      error.http_status = 501;
      error.type = "server_error";
      break;
    default:
      error.http_status = 500;
      error.type = "server_error";
      break;
  }
  return error;
}

absl::Status StatusFromApiError(const ApiError& error) {
  switch (error.http_status) {
    case 400:
      return absl::InvalidArgumentError(error.message);
    case 404:
      return absl::NotFoundError(error.message);
    case 429:
      return absl::ResourceExhaustedError(error.message);
    case 501:
      return absl::UnimplementedError(error.message);
    case 503:
      return absl::UnavailableError(error.message);
    case 504:
      return absl::DeadlineExceededError(error.message);
    default:
      return error.http_status < 500 ? absl::InvalidArgumentError(error.message) : absl::InternalError(error.message);
  }
}

nlohmann::ordered_json RenderError(const ApiError& error) {
  return json{{"error",
               {{"message", error.message},
                {"type", error.type},
                {"param", error.param.empty() ? json(nullptr) : json(error.param)},
                {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
}

// ---------------------------------------------------------------------------------------------
// Requests

ApiResult<GenerationRequest> ParseChatCompletionRequest(std::string_view body) {
  json parsed;
  FLOTILLA_RETURN_IF_API_ERROR(ParseBodyObject(body, parsed));
  Fields fields(parsed);
  GenerationRequest request;
  request.endpoint = Endpoint::kChatCompletions;

  const json* messages = fields.Get("messages");
  if (messages == nullptr) return InvalidRequestError("Missing required parameter: 'messages'.", "messages");
  json normalized;
  FLOTILLA_RETURN_IF_API_ERROR(NormalizeMessages(*messages, normalized));
  request.messages = std::move(normalized);
  FLOTILLA_RETURN_IF_API_ERROR(ReadSharedGenerationFields(fields, request));

  // max_completion_tokens is the current name; max_tokens the deprecated one many clients send.
  std::optional<int> max_completion_tokens;
  FLOTILLA_RETURN_IF_API_ERROR(ReadMaxTokens(fields, "max_completion_tokens", max_completion_tokens));
  FLOTILLA_RETURN_IF_API_ERROR(ReadMaxTokens(fields, "max_tokens", request.max_tokens));
  if (max_completion_tokens.has_value()) request.max_tokens = max_completion_tokens;
  FLOTILLA_RETURN_IF_API_ERROR(CheckMinTokens(request));

  FLOTILLA_RETURN_IF_API_ERROR(ReadBool(fields, "logprobs", request.logprobs));
  std::optional<int64_t> top_logprobs;
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "top_logprobs", top_logprobs));
  if (top_logprobs.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("top_logprobs", static_cast<double>(*top_logprobs), 0,
                                            kMaxChatTopLogprobs));
    // vLLM's rule: a positive top_logprobs needs logprobs (0 asks for nothing and is harmless).
    if (*top_logprobs > 0 && !request.logprobs) {
      return InvalidRequestError("Invalid 'top_logprobs': 'logprobs' must be set to true when top_logprobs is used.",
                                 "top_logprobs");
    }
    request.top_logprobs = static_cast<int>(*top_logprobs);
  }

  FLOTILLA_RETURN_IF_API_ERROR(ReadTools(fields, request));
  fields.Ignore({"parallel_tool_calls"});
  FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, "functions", "use 'tools'"));
  FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, "function_call", "use 'tool_choice'"));
  FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, "audio", "the models served here produce text only"));
  FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, "documents"));
  FLOTILLA_RETURN_IF_API_ERROR(
      RejectUnlessDefault(fields, "chat_template", "the model's own chat template is always used"));
  FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, "echo"));
  if (const json* response_format = fields.Get("response_format")) {
    if (!response_format->is_object()) return WrongType("response_format", "an object", *response_format);
    const std::string type = response_format->value("type", std::string());
    if (type != "text") {
      return InvalidRequestError(absl::StrCat("Invalid 'response_format.type': '", type,
                                              "' is not supported by this server; only 'text' is."),
                                 "response_format.type");
    }
  }

  FLOTILLA_RETURN_IF_API_ERROR(ReadBool(fields, "add_generation_prompt", request.add_generation_prompt));
  FLOTILLA_RETURN_IF_API_ERROR(ReadBool(fields, "continue_final_message", request.continue_final_message));
  if (request.add_generation_prompt && request.continue_final_message && fields.Get("add_generation_prompt")) {
    return InvalidRequestError(
        "Invalid request: 'continue_final_message' and 'add_generation_prompt' cannot both be true.",
        "continue_final_message");
  }
  if (request.continue_final_message) request.add_generation_prompt = false;
  if (const json* kwargs = fields.Get("chat_template_kwargs")) {
    if (!kwargs->is_object()) return WrongType("chat_template_kwargs", "an object", *kwargs);
    request.chat_template_kwargs = *kwargs;
  }

  FLOTILLA_RETURN_IF_API_ERROR(fields.CheckNoUnknown());
  return request;
}

ApiResult<GenerationRequest> ParseCompletionRequest(std::string_view body) {
  json parsed;
  FLOTILLA_RETURN_IF_API_ERROR(ParseBodyObject(body, parsed));
  Fields fields(parsed);
  GenerationRequest request;
  request.endpoint = Endpoint::kCompletions;

  const json* prompt = fields.Get("prompt");
  if (prompt == nullptr) return InvalidRequestError("Missing required parameter: 'prompt'.", "prompt");
  const std::string kOnePrompt = "; send one request per prompt";
  if (prompt->is_string()) {
    request.prompt = prompt->get<std::string>();
  } else if (prompt->is_array() && prompt->empty()) {
    return InvalidRequestError("Invalid 'prompt': empty array.", "prompt");
  } else if (IsTokenIdArray(*prompt)) {
    request.prompt_token_ids.emplace();
    FLOTILLA_RETURN_IF_API_ERROR(ReadTokenIds("prompt", *prompt, *request.prompt_token_ids));
  } else if (prompt->is_array() && (*prompt)[0].is_string()) {
    if (prompt->size() > 1) {
      return InvalidRequestError(absl::StrCat("Invalid 'prompt': a list of ", prompt->size(),
                                              " prompts is not supported", kOnePrompt, "."),
                                 "prompt");
    }
    request.prompt = (*prompt)[0].get<std::string>();
  } else if (prompt->is_array() && IsTokenIdArray((*prompt)[0])) {
    if (prompt->size() > 1) {
      return InvalidRequestError(absl::StrCat("Invalid 'prompt': a list of ", prompt->size(),
                                              " token-id prompts is not supported", kOnePrompt, "."),
                                 "prompt");
    }
    if ((*prompt)[0].empty()) return InvalidRequestError("Invalid 'prompt[0]': empty array.", "prompt");
    request.prompt_token_ids.emplace();
    FLOTILLA_RETURN_IF_API_ERROR(ReadTokenIds("prompt[0]", (*prompt)[0], *request.prompt_token_ids));
  } else {
    return WrongType("prompt", "a string, an array of strings, or an array of token ids", *prompt);
  }

  FLOTILLA_RETURN_IF_API_ERROR(ReadSharedGenerationFields(fields, request));
  FLOTILLA_RETURN_IF_API_ERROR(ReadMaxTokens(fields, "max_tokens", request.max_tokens));
  if (!request.max_tokens.has_value()) request.max_tokens = kDefaultCompletionMaxTokens;
  FLOTILLA_RETURN_IF_API_ERROR(CheckMinTokens(request));

  std::optional<int64_t> logprobs;
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "logprobs", logprobs));
  if (logprobs.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("logprobs", static_cast<double>(*logprobs), 0, kMaxCompletionLogprobs));
    request.logprobs = true;
    request.top_logprobs = static_cast<int>(*logprobs);
  }
  FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, "echo", "the prompt is not repeated in the output"));
  FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, "suffix"));
  std::optional<int64_t> best_of;
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "best_of", best_of));
  if (best_of.has_value() && *best_of != request.n) {
    return InvalidRequestError(absl::StrCat("Invalid 'best_of': only best_of equal to n (", request.n,
                                            ") is supported, but got ", *best_of, "."),
                               "best_of");
  }

  FLOTILLA_RETURN_IF_API_ERROR(fields.CheckNoUnknown());
  return request;
}

ApiResult<EmbeddingRequest> ParseEmbeddingRequest(std::string_view body) {
  json parsed;
  FLOTILLA_RETURN_IF_API_ERROR(ParseBodyObject(body, parsed));
  Fields fields(parsed);
  EmbeddingRequest request;

  const json* input = fields.Get("input");
  if (input == nullptr) return InvalidRequestError("Missing required parameter: 'input'.", "input");
  if (input->is_string()) {
    request.texts.push_back(input->get<std::string>());
  } else if (!input->is_array() || input->empty()) {
    if (input->is_array()) return InvalidRequestError("Invalid 'input': empty array.", "input");
    return WrongType("input", "a string, an array of strings, or token ids", *input);
  } else if (IsTokenIdArray(*input)) {
    request.token_ids.emplace_back();
    FLOTILLA_RETURN_IF_API_ERROR(ReadTokenIds("input", *input, request.token_ids.back()));
  } else if ((*input)[0].is_string()) {
    for (size_t i = 0; i < input->size(); ++i) {
      if (!(*input)[i].is_string()) return WrongType(absl::StrCat("input[", i, "]"), "a string", (*input)[i]);
      request.texts.push_back((*input)[i].get<std::string>());
    }
  } else {
    for (size_t i = 0; i < input->size(); ++i) {
      const std::string name = absl::StrCat("input[", i, "]");
      if (!IsTokenIdArray((*input)[i])) return WrongType(name, "an array of token ids", (*input)[i]);
      if ((*input)[i].empty()) return InvalidRequestError(absl::StrCat("Invalid '", name, "': empty array."), name);
      request.token_ids.emplace_back();
      FLOTILLA_RETURN_IF_API_ERROR(ReadTokenIds(name, (*input)[i], request.token_ids.back()));
    }
  }
  for (size_t i = 0; i < request.texts.size(); ++i) {
    if (request.texts[i].empty()) {
      return InvalidRequestError(absl::StrCat("Invalid 'input[", i, "]': empty string."), "input");
    }
  }
  if (!request.token_ids.empty() && request.token_ids[0].empty()) {
    return InvalidRequestError("Invalid 'input': empty array.", "input");
  }

  FLOTILLA_RETURN_IF_API_ERROR(ReadModel(fields, request.model));
  std::optional<std::string> encoding_format;
  FLOTILLA_RETURN_IF_API_ERROR(ReadString(fields, "encoding_format", encoding_format));
  if (encoding_format.has_value()) {
    if (*encoding_format == "float") {
      request.encoding_format = EncodingFormat::kFloat;
    } else if (*encoding_format == "base64") {
      request.encoding_format = EncodingFormat::kBase64;
    } else {
      return InvalidRequestError(absl::StrCat("Invalid value for 'encoding_format': '", *encoding_format,
                                              "' is not one of 'float', 'base64'."),
                                 "encoding_format");
    }
  }
  std::optional<int64_t> dimensions;
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "dimensions", dimensions));
  if (dimensions.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("dimensions", static_cast<double>(*dimensions), 1,
                                            std::numeric_limits<int32_t>::max()));
    request.dimensions = static_cast<int>(*dimensions);
  }
  FLOTILLA_RETURN_IF_API_ERROR(ReadOptionalBool(fields, "add_special_tokens", request.add_special_tokens));
  std::optional<int64_t> priority;
  FLOTILLA_RETURN_IF_API_ERROR(ReadInteger(fields, "priority", priority));
  if (priority.has_value()) {
    FLOTILLA_RETURN_IF_API_ERROR(CheckRange("priority", static_cast<double>(*priority),
                                            std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
    request.priority = static_cast<int>(*priority);
  }
  std::optional<std::string> request_id;
  FLOTILLA_RETURN_IF_API_ERROR(ReadString(fields, "request_id", request_id));
  request.request_id = request_id.value_or("");
  fields.Ignore({"user"});
  FLOTILLA_RETURN_IF_API_ERROR(RejectUnlessDefault(fields, "truncate_prompt_tokens"));
  FLOTILLA_RETURN_IF_API_ERROR(fields.CheckNoUnknown());
  return request;
}

std::optional<ApiError> CheckEmbeddingDimensions(const EmbeddingRequest& request, int model_dimensions) {
  if (!request.dimensions.has_value() || *request.dimensions == model_dimensions) return std::nullopt;
  return InvalidRequestError(absl::StrCat("Invalid 'dimensions': model `", request.model, "` produces ",
                                          model_dimensions, "-dimensional embeddings and does not support ",
                                          *request.dimensions, "."),
                             "dimensions");
}

// ---------------------------------------------------------------------------------------------
// Renderers

namespace {

// vLLM's clamp: -inf (a token the sampler could not pick) would render as null.
double FiniteLogprob(float logprob) { return std::isfinite(logprob) ? logprob : -9999.0; }

json Bytes(const std::string& token) {
  json bytes = json::array();
  for (unsigned char byte : token) bytes.push_back(static_cast<int>(byte));
  return bytes;
}

json ChunkBase(const ResponseContext& context, std::string_view object) {
  return json{{"id", context.id}, {"object", object}, {"created", context.created}, {"model", context.model}};
}

json ToolCallJson(const ToolCall& call) {
  return json{{"id", call.id},
              {"type", "function"},
              {"function", {{"name", call.name}, {"arguments", call.arguments}}}};
}

json NullOr(std::string_view text) { return text.empty() ? json(nullptr) : json(text); }

}  // namespace

std::string NewResponseId(Endpoint endpoint) {
  return absl::StrCat(endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-", RandomHex(32));
}

std::string NewEmbeddingId() { return absl::StrCat("embd-", RandomHex(32)); }

nlohmann::ordered_json RenderUsage(const Usage& usage) {
  return json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

nlohmann::ordered_json RenderChatLogprobs(const std::vector<TokenLogprob>& logprobs) {
  json content = json::array();
  for (const TokenLogprob& entry : logprobs) {
    json top = json::array();
    for (const TopLogprob& alternative : entry.top_logprobs) {
      top.push_back({{"token", alternative.token},
                     {"bytes", Bytes(alternative.token)},
                     {"logprob", FiniteLogprob(alternative.logprob)}});
    }
    content.push_back({{"token", entry.token},
                       {"bytes", Bytes(entry.token)},
                       {"logprob", FiniteLogprob(entry.logprob)},
                       {"top_logprobs", std::move(top)}});
  }
  return json{{"content", std::move(content)}};
}

nlohmann::ordered_json RenderCompletionLogprobs(const std::vector<TokenLogprob>& logprobs, size_t text_offset) {
  json tokens = json::array();
  json token_logprobs = json::array();
  json top_logprobs = json::array();
  json text_offsets = json::array();
  for (const TokenLogprob& entry : logprobs) {
    tokens.push_back(entry.token);
    token_logprobs.push_back(FiniteLogprob(entry.logprob));
    json top = json::object();
    for (const TopLogprob& alternative : entry.top_logprobs) top[alternative.token] = FiniteLogprob(alternative.logprob);
    top_logprobs.push_back(entry.top_logprobs.empty() ? json(nullptr) : std::move(top));
    text_offsets.push_back(text_offset);
    text_offset += entry.token.size();
  }
  return json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", std::move(top_logprobs)},
              {"text_offset", std::move(text_offsets)}};
}

nlohmann::ordered_json RenderChatCompletion(const ResponseContext& context, const std::vector<ChoiceResult>& choices,
                                    const Usage& usage) {
  json response = ChunkBase(context, "chat.completion");
  json rendered = json::array();
  for (const ChoiceResult& choice : choices) {
    json message = {{"role", "assistant"}};
    // OpenAI sends null content beside tool calls when the model wrote nothing else.
    message["content"] = choice.tool_calls.empty() ? json(choice.text) : NullOr(choice.text);
    if (!choice.tool_calls.empty()) {
      json calls = json::array();
      for (const ToolCall& call : choice.tool_calls) calls.push_back(ToolCallJson(call));
      message["tool_calls"] = std::move(calls);
    }
    rendered.push_back({{"index", choice.index},
                        {"message", std::move(message)},
                        {"logprobs", choice.has_logprobs ? RenderChatLogprobs(choice.logprobs) : json(nullptr)},
                        {"finish_reason", NullOr(choice.finish_reason)}});
  }
  response["choices"] = std::move(rendered);
  response["usage"] = RenderUsage(usage);
  return response;
}

nlohmann::ordered_json RenderCompletion(const ResponseContext& context, const std::vector<ChoiceResult>& choices,
                                const Usage& usage) {
  json response = ChunkBase(context, "text_completion");
  json rendered = json::array();
  for (const ChoiceResult& choice : choices) {
    rendered.push_back({{"index", choice.index},
                        {"text", choice.text},
                        {"logprobs", choice.has_logprobs ? RenderCompletionLogprobs(choice.logprobs) : json(nullptr)},
                        {"finish_reason", NullOr(choice.finish_reason)}});
  }
  response["choices"] = std::move(rendered);
  response["usage"] = RenderUsage(usage);
  return response;
}

namespace {

json ChatChunk(const ResponseContext& context, int index, json delta, const json& logprobs,
               std::string_view finish_reason, const Usage* usage) {
  json chunk = ChunkBase(context, "chat.completion.chunk");
  chunk["choices"] = json::array({json{{"index", index},
                                       {"delta", std::move(delta)},
                                       {"logprobs", logprobs},
                                       {"finish_reason", NullOr(finish_reason)}}});
  if (usage != nullptr) chunk["usage"] = RenderUsage(*usage);
  return chunk;
}

}  // namespace

nlohmann::ordered_json RenderChatRoleChunk(const ResponseContext& context, int index) {
  return ChatChunk(context, index, json{{"role", "assistant"}, {"content", ""}}, nullptr, "", nullptr);
}

nlohmann::ordered_json RenderChatContentChunk(const ResponseContext& context, int index, std::string_view content,
                                      const std::vector<TokenLogprob>* logprobs, const Usage* usage) {
  return ChatChunk(context, index, json{{"content", content}},
                   logprobs != nullptr ? RenderChatLogprobs(*logprobs) : json(nullptr), "", usage);
}

nlohmann::ordered_json RenderChatToolCallChunk(const ResponseContext& context, int index, int tool_call_index,
                                       const ToolCall& call) {
  json delta_call = ToolCallJson(call);
  delta_call["index"] = tool_call_index;
  return ChatChunk(context, index, json{{"tool_calls", json::array({std::move(delta_call)})}}, nullptr, "",
                   nullptr);
}

nlohmann::ordered_json RenderChatFinishChunk(const ResponseContext& context, int index, std::string_view finish_reason,
                                     const Usage* usage) {
  return ChatChunk(context, index, json::object(), nullptr, finish_reason, usage);
}

nlohmann::ordered_json RenderChatUsageChunk(const ResponseContext& context, const Usage& usage) {
  json chunk = ChunkBase(context, "chat.completion.chunk");
  chunk["choices"] = json::array();
  chunk["usage"] = RenderUsage(usage);
  return chunk;
}

nlohmann::ordered_json RenderCompletionChunk(const ResponseContext& context, int index, std::string_view text,
                                     std::string_view finish_reason, const std::vector<TokenLogprob>* logprobs,
                                     size_t text_offset, const Usage* usage) {
  json chunk = ChunkBase(context, "text_completion");
  chunk["choices"] = json::array(
      {json{{"index", index},
            {"text", text},
            {"logprobs", logprobs != nullptr ? RenderCompletionLogprobs(*logprobs, text_offset) : json(nullptr)},
            {"finish_reason", NullOr(finish_reason)}}});
  if (usage != nullptr) chunk["usage"] = RenderUsage(*usage);
  return chunk;
}

nlohmann::ordered_json RenderCompletionUsageChunk(const ResponseContext& context, const Usage& usage) {
  json chunk = ChunkBase(context, "text_completion");
  chunk["choices"] = json::array();
  chunk["usage"] = RenderUsage(usage);
  return chunk;
}

nlohmann::ordered_json RenderEmbeddings(const ResponseContext& context, const std::vector<std::vector<float>>& embeddings,
                                EncodingFormat encoding_format, int prompt_tokens) {
  static_assert(std::endian::native == std::endian::little, "base64 embeddings are little-endian float32");
  json data = json::array();
  for (size_t i = 0; i < embeddings.size(); ++i) {
    json embedding;
    if (encoding_format == EncodingFormat::kBase64) {
      std::string bytes(embeddings[i].size() * sizeof(float), '\0');
      std::memcpy(bytes.data(), embeddings[i].data(), bytes.size());
      embedding = absl::Base64Escape(bytes);
    } else {
      embedding = embeddings[i];
    }
    data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", std::move(embedding)}});
  }
  json response = ChunkBase(context, "list");
  response["data"] = std::move(data);
  response["usage"] = {{"prompt_tokens", prompt_tokens}, {"total_tokens", prompt_tokens}};
  return response;
}

nlohmann::ordered_json RenderModelList(const std::vector<ModelCard>& models) {
  json data = json::array();
  for (const ModelCard& model : models) {
    data.push_back({{"id", model.id},
                    {"object", "model"},
                    {"created", model.created},
                    {"owned_by", "flotilla"},
                    {"root", model.root},
                    {"max_model_len", model.max_model_len}});
  }
  return json{{"object", "list"}, {"data", std::move(data)}};
}

// ---------------------------------------------------------------------------------------------
// Server-sent events

std::string DumpJson(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

std::string SseEvent(const nlohmann::ordered_json& event) { return absl::StrCat("data: ", DumpJson(event), "\n\n"); }

std::string SseErrorEvent(const ApiError& error) { return SseEvent(RenderError(error)); }

}  // namespace flotilla::gateway
