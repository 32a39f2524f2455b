#include "services/gateway/openai_routes.h"

#include <chrono>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "services/common/logging.h"
#include "services/common/status.h"
#include "services/gateway/gateway.h"
#include "services/gateway/generation.h"
#include "services/gateway/openai_api.h"
#include "services/gateway/prepare.h"
#include "services/gateway/tool_calls.h"

namespace flotilla::gateway {
namespace {

// How long a streaming handler waits for tokens before checking that the client is still there.
constexpr auto kLivenessPoll = std::chrono::milliseconds(100);
// Threads serving HTTP connections: each streaming request holds one, and keep-alive connections
// hold one while idle, so this bounds concurrent clients (httplib's default is the core count).
constexpr size_t kHttpThreads = 512;

int64_t UnixNow() { return static_cast<int64_t>(std::time(nullptr)); }

void ReplyJson(httplib::Response& response, int status, const nlohmann::ordered_json& body) {
  response.status = status;
  response.set_content(DumpJson(body), "application/json");
}

void ReplyError(httplib::Response& response, const ApiError& error) {
  if (error.http_status == 429) response.set_header("Retry-After", "1");
  ReplyJson(response, error.http_status, RenderError(error));
}

bool CheckJsonContentType(const httplib::Request& request, httplib::Response& response) {
  const std::string content_type = request.get_header_value("Content-Type");
  if (!content_type.empty() && !absl::StartsWithIgnoreCase(content_type, "application/json")) {
    ApiError error = InvalidRequestError(absl::StrCat("Content-Type must be application/json, got ", content_type));
    error.http_status = 415;
    ReplyError(response, error);
    return false;
  }
  return true;
}

std::vector<TokenLogprob> LogprobsOf(const ChoiceDelta& delta, const tokenizer::Tokenizer* tokenizer) {
  std::vector<TokenLogprob> logprobs;
  for (const flotilla::v1::GeneratedToken& token : delta.tokens) {
    TokenLogprob entry{TokenText(tokenizer, token.token_id()), token.logprob(), {}};
    for (const flotilla::v1::TokenLogprob& top : token.top_logprobs()) {
      entry.top_logprobs.push_back({TokenText(tokenizer, top.token_id()), top.logprob()});
    }
    logprobs.push_back(std::move(entry));
  }
  return logprobs;
}

// Everything one request's handler and its stream provider share.
struct Exchange {
  Gateway::Admission admission;
  PreparedGeneration prepared;
  GenerationRequest request;
  ResponseContext context;
  std::unique_ptr<GenerationRun> run;
  std::vector<ChoiceResult> choices;
  std::vector<ToolCallStreamParser> tool_parsers;
  std::vector<size_t> text_sent;  // completions logprobs' text_offset
  Usage usage;
  int finished = 0;
  bool started = false;
  bool done = false;
};

// Streams one request as server-sent events (chat.completion.chunk or text_completion).
bool StreamNext(Exchange& exchange, httplib::DataSink& sink) {
  auto write = [&sink](const std::string& event) { return sink.write(event.data(), event.size()); };
  const bool chat = exchange.request.endpoint == Endpoint::kChatCompletions;
  const int n = exchange.request.n;
  if (!exchange.started) {
    exchange.started = true;
    if (chat) {
      for (int index = 0; index < n; ++index) {
        if (!write(SseEvent(RenderChatRoleChunk(exchange.context, index)))) return false;
      }
    }
  }
  if (exchange.done) {
    sink.done();
    return true;
  }
  bool timed_out = false;
  std::optional<ChoiceDelta> delta = exchange.run->Next(kLivenessPoll, &timed_out);
  if (timed_out) {
    if (!sink.is_writable()) {
      exchange.run->Cancel();
      return false;
    }
    return true;
  }
  if (!delta.has_value()) {
    // Every choice finished: usage, then [DONE].
    exchange.usage.prompt_tokens = static_cast<int>(exchange.prepared.job.prompt_token_ids.size());
    if (exchange.request.include_usage) {
      const nlohmann::ordered_json usage = chat ? RenderChatUsageChunk(exchange.context, exchange.usage)
                                        : RenderCompletionUsageChunk(exchange.context, exchange.usage);
      if (!write(SseEvent(usage))) return false;
    }
    if (!write(std::string(kSseDone))) return false;
    exchange.done = true;
    sink.done();
    return true;
  }
  if (delta->tokens.empty() && delta->text.empty() && delta->finish_reason.empty() && delta->error.ok()) return true;
  if (!delta->tokens.empty()) exchange.admission.MarkStarted();
  const int index = delta->index;
  if (!delta->error.ok()) {
    exchange.run->Cancel();
    write(SseErrorEvent(ApiErrorFromStatus(delta->error)));
    write(std::string(kSseDone));
    exchange.done = true;
    sink.done();
    return true;
  }
  exchange.usage.completion_tokens += static_cast<int>(delta->tokens.size());
  const tokenizer::Tokenizer* tokenizer = exchange.prepared.tokenizer;
  std::vector<TokenLogprob> logprobs;
  if (exchange.request.logprobs) logprobs = LogprobsOf(*delta, tokenizer);
  const std::vector<TokenLogprob>* logprobs_pointer = exchange.request.logprobs ? &logprobs : nullptr;
  std::string finish_reason = delta->finish_reason;
  if (chat) {
    std::string content = delta->text;
    if (exchange.prepared.parse_tool_calls) {
      ToolCallStreamParser& parser = exchange.tool_parsers[index];
      ParsedToolCalls parsed = parser.Feed(delta->text);
      if (!finish_reason.empty()) {
        ParsedToolCalls rest = parser.Finish();
        parsed.content += rest.content;
        for (ToolCall& call : rest.tool_calls) parsed.tool_calls.push_back(std::move(call));
      }
      content = parsed.content;
      for (const ToolCall& call : parsed.tool_calls) {
        const int call_index = static_cast<int>(exchange.choices[index].tool_calls.size());
        exchange.choices[index].tool_calls.push_back(call);
        if (!write(SseEvent(RenderChatToolCallChunk(exchange.context, index, call_index, call)))) return false;
      }
      if (!finish_reason.empty() && !exchange.choices[index].tool_calls.empty() && finish_reason == "stop") {
        finish_reason = "tool_calls";
      }
    }
    // A chunk for every step's tokens, even when their text is held back (a partial character, a
    // possible stop string, a skipped special token): the client sees progress per token, and
    // `vllm bench serve`'s TTFT counts a content chunk without a role as the first output.
    if (!content.empty() || !delta->tokens.empty()) {
      if (!write(SseEvent(RenderChatContentChunk(exchange.context, index, content, logprobs_pointer)))) {
        exchange.run->Cancel();
        return false;
      }
    }
    if (!finish_reason.empty()) {
      if (!write(SseEvent(RenderChatFinishChunk(exchange.context, index, finish_reason)))) return false;
    }
  } else {
    const size_t offset = exchange.text_sent[index];
    exchange.text_sent[index] += delta->text.size();
    if (!write(SseEvent(RenderCompletionChunk(exchange.context, index, delta->text, finish_reason, logprobs_pointer,
                                              offset)))) {
      exchange.run->Cancel();
      return false;
    }
  }
  return true;
}

void HandleGeneration(Gateway& gateway, const httplib::Request& http_request, httplib::Response& http_response,
                      Endpoint endpoint) {
  if (!CheckJsonContentType(http_request, http_response)) return;
  ApiResult<GenerationRequest> request = endpoint == Endpoint::kChatCompletions
                                             ? ParseChatCompletionRequest(http_request.body)
                                             : ParseCompletionRequest(http_request.body);
  if (!request.ok()) return ReplyError(http_response, request.error());
  if (request->request_id.empty()) request->request_id = http_request.get_header_value("x-request-id");
  if (request->request_id.empty()) request->request_id = NewResponseId(endpoint);
  absl::StatusOr<Gateway::Admission> admission = gateway.Admit(request->model);
  if (!admission.ok()) return ReplyError(http_response, AdmissionError(gateway, request->model, admission.status()));
  const auto arrival = std::chrono::steady_clock::now();
  ApiResult<PreparedGeneration> prepared = PrepareGeneration(gateway, *request);
  if (!prepared.ok()) return ReplyError(http_response, prepared.error());
  prepared->job.arrival = arrival;

  auto exchange = std::make_shared<Exchange>(Exchange{std::move(*admission), std::move(*prepared), std::move(*request)});
  exchange->context = ResponseContext{NewResponseId(endpoint), exchange->request.model, UnixNow()};
  const int n = exchange->request.n;
  exchange->choices.resize(n);
  exchange->tool_parsers.resize(n);
  exchange->text_sent.assign(n, 0);
  for (int index = 0; index < n; ++index) {
    exchange->choices[index].index = index;
    exchange->choices[index].has_logprobs = exchange->request.logprobs;
  }
  exchange->run = std::make_unique<GenerationRun>(gateway, exchange->prepared.job);

  if (exchange->request.stream) {
    http_response.set_header("Cache-Control", "no-cache");
    http_response.set_chunked_content_provider(
        "text/event-stream",
        [exchange](size_t, httplib::DataSink& sink) { return StreamNext(*exchange, sink); },
        [exchange](bool) { exchange->run->Cancel(); });
    return;
  }

  // One JSON body: gather every choice.
  const tokenizer::Tokenizer* tokenizer = exchange->prepared.tokenizer;
  while (std::optional<ChoiceDelta> delta = exchange->run->Next(std::chrono::hours(24))) {
    if (!delta->error.ok()) {
      exchange->run->Cancel();
      return ReplyError(http_response, ApiErrorFromStatus(delta->error));
    }
    if (!delta->tokens.empty()) exchange->admission.MarkStarted();
    ChoiceResult& choice = exchange->choices[delta->index];
    choice.text += delta->text;
    exchange->usage.completion_tokens += static_cast<int>(delta->tokens.size());
    if (exchange->request.logprobs) {
      for (TokenLogprob& entry : LogprobsOf(*delta, tokenizer)) choice.logprobs.push_back(std::move(entry));
    }
    if (!delta->finish_reason.empty()) choice.finish_reason = delta->finish_reason;
  }
  exchange->usage.prompt_tokens = static_cast<int>(exchange->prepared.job.prompt_token_ids.size());
  if (endpoint == Endpoint::kChatCompletions) {
    if (exchange->prepared.parse_tool_calls) {
      for (ChoiceResult& choice : exchange->choices) {
        ParsedToolCalls parsed = ParseToolCalls(choice.text);
        choice.text = parsed.content;
        choice.tool_calls = std::move(parsed.tool_calls);
        if (!choice.tool_calls.empty() && choice.finish_reason == "stop") choice.finish_reason = "tool_calls";
      }
    }
    ReplyJson(http_response, 200, RenderChatCompletion(exchange->context, exchange->choices, exchange->usage));
  } else {
    ReplyJson(http_response, 200, RenderCompletion(exchange->context, exchange->choices, exchange->usage));
  }
}

void HandleEmbeddings(Gateway& gateway, const httplib::Request& http_request, httplib::Response& http_response) {
  if (!CheckJsonContentType(http_request, http_response)) return;
  ApiResult<EmbeddingRequest> request = ParseEmbeddingRequest(http_request.body);
  if (!request.ok()) return ReplyError(http_response, request.error());
  absl::StatusOr<Gateway::Admission> admission = gateway.Admit(request->model);
  if (!admission.ok()) return ReplyError(http_response, AdmissionError(gateway, request->model, admission.status()));
  ApiResult<PreparedEmbedding> prepared = PrepareEmbedding(gateway, *request, "embed");
  if (!prepared.ok()) return ReplyError(http_response, prepared.error());
  absl::StatusOr<std::vector<std::vector<float>>> embeddings = RunEmbedding(gateway, request->model, request->request_id, *prepared);
  if (!embeddings.ok()) return ReplyError(http_response, ApiErrorFromStatus(embeddings.status()));
  if (!embeddings->empty()) {
    if (std::optional<ApiError> error = CheckEmbeddingDimensions(*request, static_cast<int>(embeddings->front().size()))) {
      return ReplyError(http_response, *error);
    }
  }
  ResponseContext context{NewEmbeddingId(), request->model, UnixNow()};
  ReplyJson(http_response, 200, RenderEmbeddings(context, *embeddings, request->encoding_format, prepared->prompt_tokens));
}

void HandleModels(Gateway& gateway, httplib::Response& http_response) {
  std::vector<ModelCard> cards;
  for (const Router::ModelSummary& summary : gateway.router().Models()) {
    const flotilla::v1::ModelReference& source = summary.info.model();
    std::string root = source.local_path().empty()
                           ? absl::StrCat(source.namespace_(), "/", source.name(),
                                          source.revision().empty() ? "" : absl::StrCat("@", source.revision()))
                           : source.local_path();
    cards.push_back(ModelCard{summary.name, UnixNow(), summary.info.max_model_len(), root});
  }
  ReplyJson(http_response, 200, RenderModelList(cards));
}

}  // namespace

void AddOpenAiRoutes(httplib::Server& server, Gateway& gateway) {
  server.new_task_queue = [] { return new httplib::ThreadPool(kHttpThreads); };
  server.Post("/v1/chat/completions", [&gateway](const httplib::Request& request, httplib::Response& response) {
    HandleGeneration(gateway, request, response, Endpoint::kChatCompletions);
  });
  server.Post("/v1/completions", [&gateway](const httplib::Request& request, httplib::Response& response) {
    HandleGeneration(gateway, request, response, Endpoint::kCompletions);
  });
  server.Post("/v1/embeddings", [&gateway](const httplib::Request& request, httplib::Response& response) {
    HandleEmbeddings(gateway, request, response);
  });
  server.Get("/v1/models", [&gateway](const httplib::Request&, httplib::Response& response) {
    HandleModels(gateway, response);
  });
}

}  // namespace flotilla::gateway
