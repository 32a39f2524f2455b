// OpenAI's HTTP API shapes, all in this one file: request parsing and validation into the
// GenerationRequest / EmbeddingRequest structs that the gRPC API fills too, the response and
// streaming-chunk renderers, the error body, and server-sent-event framing. No transport here:
// the HTTP handlers parse with these functions, call the gateway's generation core, and write
// what the renderers return. The shapes follow openai-python's types and vLLM 0.34's extensions
// (/work/shared/reference/serving.md §1).
//
//   ApiResult<GenerationRequest> request = ParseChatCompletionRequest(http_request.body);
//   if (!request.ok()) return Reply(request.error().http_status, RenderError(request.error()));
//   ResponseContext context{NewResponseId(Endpoint::kChatCompletions), request->model, now};
//   ... generate ...
//   Reply(200, RenderChatCompletion(context, choices, usage));
//
// Streaming: SseEvent(RenderChatRoleChunk(context, 0)), then SseEvent(RenderChatContentChunk(...))
// per delta, SseEvent(RenderChatFinishChunk(...)), with include_usage
// SseEvent(RenderChatUsageChunk(...)), and finally kSseDone.
//
// Thread safety: every function is thread-safe (no shared state; ids come from a per-thread
// generator).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "services/gateway/tool_calls.h"

namespace flotilla::gateway {

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

// An error as OpenAI returns it: HTTP status plus {"error": {"message", "type", "param", "code"}}.
// `type` is OpenAI's ("invalid_request_error" for 400 and 404, "rate_limit_exceeded" for 429,
// "server_error" for 5xx); `param` names the offending field ("messages[1].role"), empty renders
// null; `code` keeps OpenAI's string codes where one exists ("model_not_found"), empty renders null
// (vLLM puts the HTTP status number there; openai-python only displays it).
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;
  std::string code;
};

ApiError InvalidRequestError(std::string message, std::string param = "");
// 404 for an unknown model: "The model `X` does not exist.", param "model", code "model_not_found".
ApiError ModelNotFoundError(std::string_view model);
// Maps a Status from the generation core to an HTTP error: INVALID_ARGUMENT / OUT_OF_RANGE /
// FAILED_PRECONDITION 400, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503,
// DEADLINE_EXCEEDED 504, UNIMPLEMENTED 501, everything else 500.
ApiError ApiErrorFromStatus(const absl::Status& status);
// The reverse, for the gRPC API, which validates with the same parsers' rules.
absl::Status StatusFromApiError(const ApiError& error);

nlohmann::ordered_json RenderError(const ApiError& error);

// The value or the error of a parse. Named like absl::StatusOr, but the error keeps its HTTP
// status and `param`.
template <typename T>
class ApiResult {
 public:
  ApiResult(T value) : value_(std::move(value)) {}             // NOLINT: implicit, like StatusOr
  ApiResult(ApiError error) : value_(std::move(error)) {}      // NOLINT
  bool ok() const { return std::holds_alternative<T>(value_); }
  const ApiError& error() const { return std::get<ApiError>(value_); }
  T& value() { return std::get<T>(value_); }
  const T& value() const { return std::get<T>(value_); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, ApiError> value_;
};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

enum class Endpoint { kChatCompletions, kCompletions };

// Limits we choose where OpenAI and vLLM differ. Documented in README.md.
inline constexpr int kMaxChoices = 8;             // n: OpenAI allows 128; each choice is a sequence
inline constexpr int kMaxStopStrings = 16;        // OpenAI: 4; vLLM: unlimited
inline constexpr int kMaxChatTopLogprobs = 20;    // OpenAI's bound
inline constexpr int kMaxCompletionLogprobs = 5;  // OpenAI's bound for /v1/completions
inline constexpr int kDefaultCompletionMaxTokens = 16;  // OpenAI's (and vLLM's) legacy default

// One generation request, as both the HTTP and the gRPC API fill it. Sampling fields that are
// unset (nullopt) take the model's generation_config.json defaults, as vLLM does.
struct GenerationRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string model;

  // Exactly one input is set.
  std::optional<std::string> prompt;
  // Chat messages, normalized for the chat template: every "content" is a string (text parts
  // joined with "\n", as vLLM does) or null (an assistant turn with tool_calls), and assistant
  // tool_calls' "arguments" are parsed into objects when they hold JSON (templates render them
  // with tojson). Other keys (name, tool_call_id, tool_calls) are kept.
  std::optional<nlohmann::ordered_json> messages;
  std::optional<std::vector<int32_t>> prompt_token_ids;

  nlohmann::ordered_json tools;        // the request's array, validated; null when absent
  std::string tool_choice;     // "none" or "auto" ("auto" when tools are given, else "none")

  int n = 1;
  std::optional<int> max_tokens;  // from max_completion_tokens, else max_tokens
  std::vector<std::string> stop;
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int> top_k;  // 0 or -1: off
  std::optional<float> min_p;
  std::optional<float> repetition_penalty;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<int64_t> seed;
  std::map<int32_t, float> logit_bias;
  bool logprobs = false;   // chat: logprobs; completions: logprobs is not null
  int top_logprobs = 0;    // chat: top_logprobs; completions: the logprobs integer
  int min_tokens = 0;
  bool ignore_eos = false;
  int priority = 0;        // lower is served first (vLLM)
  std::vector<int32_t> stop_token_ids;
  bool stream = false;
  bool include_usage = false;           // stream_options.include_usage
  bool continuous_usage_stats = false;  // vLLM: usage on every chunk
  bool skip_special_tokens = true;
  bool include_stop_str_in_output = false;
  bool add_generation_prompt = true;
  bool continue_final_message = false;
  std::optional<bool> add_special_tokens;  // unset: chat false, completions true (vLLM)
  nlohmann::ordered_json chat_template_kwargs;     // object or null
  std::string request_id;                  // empty: the gateway picks one

  // Whether the generated text is parsed for tool calls.
  bool ParsesToolCalls() const { return tools.is_array() && !tools.empty() && tool_choice != "none"; }
};

// POST /v1/chat/completions and POST /v1/completions bodies. Every field OpenAI documents is
// accepted (the ones we do not implement are ignored when they cannot change the output, and
// rejected with 400 "... is not supported" when they would); unknown fields are rejected like
// OpenAI does: 400 "Unrecognized request argument supplied: X".
ApiResult<GenerationRequest> ParseChatCompletionRequest(std::string_view body);
ApiResult<GenerationRequest> ParseCompletionRequest(std::string_view body);

enum class EncodingFormat { kFloat, kBase64 };

// POST /v1/embeddings.
struct EmbeddingRequest {
  std::string model;
  // Exactly one of the two is non-empty.
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> token_ids;
  EncodingFormat encoding_format = EncodingFormat::kFloat;
  std::optional<int> dimensions;
  std::optional<bool> add_special_tokens;
  int priority = 0;
  std::string request_id;
};

ApiResult<EmbeddingRequest> ParseEmbeddingRequest(std::string_view body);
// 400 unless `dimensions` is unset or equal to the model's (we do not truncate Matryoshka-style).
std::optional<ApiError> CheckEmbeddingDimensions(const EmbeddingRequest& request, int model_dimensions);

// ---------------------------------------------------------------------------------------------
// Results the gateway fills, and the renderers
// ---------------------------------------------------------------------------------------------

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

struct TopLogprob {
  std::string token;  // the token's text; may be part of a UTF-8 character
  float logprob = 0.0f;
};

// One sampled token's log-probability and the most likely alternatives at its position.
struct TokenLogprob {
  std::string token;
  float logprob = 0.0f;
  std::vector<TopLogprob> top_logprobs;
};

struct ChoiceResult {
  int index = 0;
  std::string text;           // chat: the message content (tool calls already taken out)
  std::string finish_reason;  // "stop", "length", "tool_calls", "abort"...
  bool has_logprobs = false;  // the request asked for logprobs
  std::vector<TokenLogprob> logprobs;
  std::vector<ToolCall> tool_calls;
};

// What every response and chunk of one request shares.
struct ResponseContext {
  std::string id;  // NewResponseId
  std::string model;
  int64_t created = 0;  // unix seconds
};

// "chatcmpl-<32 hex>", "cmpl-<32 hex>"; "embd-<32 hex>" for embeddings.
std::string NewResponseId(Endpoint endpoint);
std::string NewEmbeddingId();

nlohmann::ordered_json RenderUsage(const Usage& usage);

// {"content": [{token, bytes, logprob, top_logprobs: [{token, bytes, logprob}]}]}
nlohmann::ordered_json RenderChatLogprobs(const std::vector<TokenLogprob>& logprobs);
// {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}; text offsets
// count bytes of the choice's text from `text_offset` (the length already sent, when streaming).
nlohmann::ordered_json RenderCompletionLogprobs(const std::vector<TokenLogprob>& logprobs, size_t text_offset = 0);

// Non-streaming responses.
nlohmann::ordered_json RenderChatCompletion(const ResponseContext& context, const std::vector<ChoiceResult>& choices,
                                    const Usage& usage);
nlohmann::ordered_json RenderCompletion(const ResponseContext& context, const std::vector<ChoiceResult>& choices,
                                const Usage& usage);

// chat.completion.chunk events, in the order vLLM sends them. Content chunks carry no "usage" key
// unless `usage` is given (vLLM's continuous_usage_stats).
nlohmann::ordered_json RenderChatRoleChunk(const ResponseContext& context, int index);
nlohmann::ordered_json RenderChatContentChunk(const ResponseContext& context, int index, std::string_view content,
                                      const std::vector<TokenLogprob>* logprobs = nullptr,
                                      const Usage* usage = nullptr);
// One complete call: delta {tool_calls: [{index, id, type: "function", function: {name, arguments}}]}.
nlohmann::ordered_json RenderChatToolCallChunk(const ResponseContext& context, int index, int tool_call_index,
                                       const ToolCall& call);
nlohmann::ordered_json RenderChatFinishChunk(const ResponseContext& context, int index, std::string_view finish_reason,
                                     const Usage* usage = nullptr);
// {"choices": [], "usage": {...}}: the extra chunk before [DONE] when include_usage is set.
nlohmann::ordered_json RenderChatUsageChunk(const ResponseContext& context, const Usage& usage);

// text_completion stream chunks: text deltas, then one with finish_reason (text may be empty).
nlohmann::ordered_json RenderCompletionChunk(const ResponseContext& context, int index, std::string_view text,
                                     std::string_view finish_reason = "",
                                     const std::vector<TokenLogprob>* logprobs = nullptr,
                                     size_t text_offset = 0, const Usage* usage = nullptr);
nlohmann::ordered_json RenderCompletionUsageChunk(const ResponseContext& context, const Usage& usage);

// {object: "list", data: [{object: "embedding", index, embedding}], model, usage}; base64 is the
// little-endian float32 bytes, as OpenAI's.
nlohmann::ordered_json RenderEmbeddings(const ResponseContext& context, const std::vector<std::vector<float>>& embeddings,
                                EncodingFormat encoding_format, int prompt_tokens);

struct ModelCard {
  std::string id;
  int64_t created = 0;
  int max_model_len = 0;
  std::string root;  // the registry reference it was loaded from
};
// {object: "list", data: [{id, object: "model", created, owned_by: "flotilla", max_model_len, root}]}
nlohmann::ordered_json RenderModelList(const std::vector<ModelCard>& models);

// ---------------------------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------------------------

inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";
// "data: <json>\n\n". Invalid UTF-8 (a token that is part of a character) becomes U+FFFD.
std::string SseEvent(const nlohmann::ordered_json& event);
// An error after the stream started: data: {"error": {...}}; follow it with kSseDone.
std::string SseErrorEvent(const ApiError& error);
// The JSON body of a non-streaming response, with the same UTF-8 replacement.
std::string DumpJson(const nlohmann::ordered_json& value);

}  // namespace flotilla::gateway
