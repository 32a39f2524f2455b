#include "services/gateway/prepare.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include <grpcpp/grpcpp.h>
#include "services/common/status.h"
#include "services/preprocess/chat_template/chat_template.h"

namespace flotilla::gateway {

ApiError AdmissionError(Gateway& gateway, const std::string& model, const absl::Status& status) {
  if (!absl::IsNotFound(status)) return ApiErrorFromStatus(status);
  ApiError error = ModelNotFoundError(model);
  error.message = absl::StrCat(error.message, " Served models: ", gateway.router().ServedNames(), ".");
  return error;
}

namespace {

ApiResult<Gateway::ModelProcessors> ServedProcessors(Gateway& gateway, const std::string& model) {
  absl::StatusOr<Gateway::ModelProcessors> processors = gateway.Processors(model);
  if (!processors.ok()) {
    if (absl::IsNotFound(processors.status()) && !gateway.router().Info(model).ok()) {
      return AdmissionError(gateway, model, processors.status());
    }
    return ApiErrorFromStatus(processors.status());
  }
  return *std::move(processors);
}

ApiError WrongTask(const std::string& model, const std::string& task, const std::string& wanted) {
  const std::string endpoint = task == "generate" ? "/v1/chat/completions or /v1/completions" : "/v1/embeddings";
  return InvalidRequestError(absl::StrCat("The model `", model, "` is served for ", task == "generate" ? "generation" : task,
                                          ", not ", wanted, "; send it to ", endpoint, "."),
                             "model");
}

}  // namespace

std::string TokenText(const tokenizer::Tokenizer* tokenizer, int32_t token_id) {
  if (tokenizer == nullptr) return absl::StrCat("token_id:", token_id);
  const uint32_t id = static_cast<uint32_t>(token_id);
  absl::StatusOr<std::string> text = tokenizer->Decode(std::span<const uint32_t>(&id, 1), /*skip_special_tokens=*/false);
  return text.ok() ? *text : absl::StrCat("token_id:", token_id);
}

ApiResult<PreparedGeneration> PrepareGeneration(Gateway& gateway, const GenerationRequest& request) {
  ApiResult<Gateway::ModelProcessors> processors = ServedProcessors(gateway, request.model);
  if (!processors.ok()) return processors.error();
  const flotilla::v1::WorkerInfo& info = processors->info;
  if (info.task() != "generate") return WrongTask(request.model, info.task(), "generation");

  PreparedGeneration prepared;
  prepared.processors = *processors;
  absl::StatusOr<const tokenizer::Tokenizer*> tokenizer = prepared.processors.handle.Tokenizer();
  if (tokenizer.ok()) prepared.tokenizer = *tokenizer;

  std::vector<int32_t> prompt_ids;
  if (request.prompt_token_ids.has_value()) {
    prompt_ids = *request.prompt_token_ids;
  } else {
    if (prepared.tokenizer == nullptr) {
      return InvalidRequestError(absl::StrCat("The model `", request.model, "` has no tokenizer (",
                                              tokenizer.status().message(), "); send token ids instead of text."),
                                 request.messages.has_value() ? "messages" : "prompt");
    }
    std::string text;
    bool add_special_tokens;
    if (request.messages.has_value()) {
      if (prepared.processors.handle.model->chat_template == nullptr) {
        return InvalidRequestError(absl::StrCat("The model `", request.model, "` ",
                                                prepared.processors.handle.model->chat_template_status.message(),
                                                "; use /v1/completions."),
                                   "messages");
      }
      chat_template::ChatTemplateOptions options;
      options.add_generation_prompt = request.add_generation_prompt && !request.continue_final_message;
      if (request.tools.is_array() && !request.tools.empty()) options.tools_json = request.tools.dump();
      if (request.chat_template_kwargs.is_object()) options.extra_context_json = request.chat_template_kwargs.dump();
      absl::StatusOr<std::string> rendered = prepared.processors.handle.model->RenderChat(request.messages->dump(), options);
      if (!rendered.ok()) {
        return InvalidRequestError(absl::StrCat("The chat template of `", request.model, "` failed: ",
                                                rendered.status().message()),
                                   "messages");
      }
      text = *std::move(rendered);
      add_special_tokens = request.add_special_tokens.value_or(false);  // the template wrote them
    } else {
      text = *request.prompt;
      add_special_tokens = request.add_special_tokens.value_or(true);
    }
    tokenizer::EncodeOptions encode_options;
    encode_options.add_special_tokens = add_special_tokens;
    encode_options.apply_padding = false;
    absl::StatusOr<tokenizer::Encoding> encoding = prepared.tokenizer->Encode(text, encode_options);
    if (!encoding.ok()) return InvalidRequestError(absl::StrCat("Tokenizing the prompt failed: ", encoding.status().message()));
    prompt_ids.assign(encoding->ids.begin(), encoding->ids.end());
  }
  const int vocab_size = info.vocab_size();
  for (int32_t id : prompt_ids) {
    if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
      return InvalidRequestError(absl::StrCat("Token id ", id, " is outside the vocabulary of `", request.model,
                                              "` [0, ", vocab_size, ")."),
                                 "prompt");
    }
  }
  if (prompt_ids.empty()) return InvalidRequestError("The prompt is empty: it has no tokens.", "prompt");
  const int max_model_len = info.max_model_len();
  const int prompt_tokens = static_cast<int>(prompt_ids.size());
  if (prompt_tokens >= max_model_len) {
    return InvalidRequestError(absl::StrCat("This model's maximum context length is ", max_model_len,
                                            " tokens. However, your prompt has ", prompt_tokens,
                                            " tokens, leaving no room for a completion. Shorten the prompt."),
                               request.messages.has_value() ? "messages" : "prompt");
  }
  int max_tokens = request.max_tokens.value_or(request.endpoint == Endpoint::kCompletions
                                                   ? kDefaultCompletionMaxTokens
                                                   : max_model_len - prompt_tokens);
  if (request.max_tokens.has_value() && prompt_tokens + max_tokens > max_model_len) {
    return InvalidRequestError(absl::StrCat("This model's maximum context length is ", max_model_len,
                                            " tokens. However, you requested ", prompt_tokens + max_tokens, " tokens (",
                                            prompt_tokens, " in the prompt, ", max_tokens,
                                            " for the completion). Reduce the prompt or max_tokens."),
                               "max_tokens");
  }
  max_tokens = std::min(max_tokens, max_model_len - prompt_tokens);
  for (const auto& [token_id, bias] : request.logit_bias) {
    if (token_id < 0 || (vocab_size > 0 && token_id >= vocab_size)) {
      return InvalidRequestError(absl::StrCat("logit_bias: token id ", token_id, " is outside the vocabulary of `",
                                              request.model, "` [0, ", vocab_size, ")."),
                                 "logit_bias");
    }
  }
  for (int32_t token_id : request.stop_token_ids) {
    if (token_id < 0 || (vocab_size > 0 && token_id >= vocab_size)) {
      return InvalidRequestError(absl::StrCat("stop_token_ids: token id ", token_id, " is outside the vocabulary."),
                                 "stop_token_ids");
    }
  }

  GenerationJob& job = prepared.job;
  job.model = request.model;
  job.request_id = request.request_id;
  job.prompt_token_ids = std::move(prompt_ids);
  job.stop = request.stop;
  job.include_stop_string = request.include_stop_str_in_output;
  job.skip_special_tokens = request.skip_special_tokens;
  job.n = request.n;
  job.tokenizer_owner = prepared.processors.handle.model;
  job.tokenizer = prepared.tokenizer;

  // Unset sampling fields take generation_config.json's values, as vLLM does; then OpenAI's.
  const tokenizer::GenerationDefaults& defaults = prepared.processors.handle.model->generation_defaults;
  flotilla::v1::WorkerGenerateRequest& worker = job.worker_request;
  worker.set_max_tokens(max_tokens);
  worker.set_min_tokens(request.min_tokens);
  worker.mutable_stop_token_ids()->Assign(request.stop_token_ids.begin(), request.stop_token_ids.end());
  worker.set_ignore_eos(request.ignore_eos);
  worker.set_priority(request.priority);
  flotilla::v1::TokenSampling& sampling = *worker.mutable_sampling();
  const bool model_samples = defaults.do_sample.value_or(true);
  sampling.set_temperature(
      request.temperature.value_or(model_samples ? static_cast<float>(defaults.temperature.value_or(1.0)) : 0.0f));
  sampling.set_top_p(request.top_p.value_or(static_cast<float>(defaults.top_p.value_or(1.0))));
  sampling.set_top_k(request.top_k.value_or(static_cast<int>(defaults.top_k.value_or(0))));
  sampling.set_min_p(request.min_p.value_or(0.0f));
  sampling.set_repetition_penalty(
      request.repetition_penalty.value_or(static_cast<float>(defaults.repetition_penalty.value_or(1.0))));
  sampling.set_presence_penalty(request.presence_penalty);
  sampling.set_frequency_penalty(request.frequency_penalty);
  for (const auto& [token_id, bias] : request.logit_bias) (*sampling.mutable_logit_bias())[token_id] = bias;
  if (request.seed.has_value()) {
    sampling.set_has_seed(true);
    sampling.set_seed(static_cast<uint64_t>(*request.seed));
  }
  sampling.set_return_logprobs(request.logprobs);
  sampling.set_top_logprobs(request.top_logprobs);
  prepared.parse_tool_calls = request.endpoint == Endpoint::kChatCompletions && request.ParsesToolCalls();
  return prepared;
}

ApiResult<PreparedEmbedding> PrepareEmbedding(Gateway& gateway, const EmbeddingRequest& request, const std::string& task) {
  ApiResult<Gateway::ModelProcessors> processors = ServedProcessors(gateway, request.model);
  if (!processors.ok()) return processors.error();
  if (processors->info.task() != task) {
    return WrongTask(request.model, processors->info.task(), task == "embed" ? "embeddings" : "classification");
  }
  PreparedEmbedding prepared;
  prepared.processors = *processors;
  const int max_model_len = processors->info.max_model_len();
  const int vocab_size = processors->info.vocab_size();
  if (!request.texts.empty()) {
    absl::StatusOr<const tokenizer::Tokenizer*> tokenizer = prepared.processors.handle.Tokenizer();
    if (!tokenizer.ok()) {
      return InvalidRequestError(absl::StrCat("The model `", request.model, "` has no tokenizer (",
                                              tokenizer.status().message(), "); send token ids."),
                                 "input");
    }
    // Truncate as sentence-transformers does: the tokenizer's own truncation to max_seq_length,
    // so the closing special token stays.
    tokenizer::TruncationParams truncation;
    truncation.max_length = static_cast<size_t>(max_model_len);
    tokenizer::EncodeOptions options;
    options.add_special_tokens = request.add_special_tokens.value_or(true);
    options.truncation = &truncation;
    options.apply_padding = false;
    for (const std::string& text : request.texts) {
      absl::StatusOr<tokenizer::Encoding> encoding = (*tokenizer)->Encode(text, options);
      if (!encoding.ok()) return InvalidRequestError(absl::StrCat("Tokenizing the input failed: ", encoding.status().message()));
      prepared.token_ids.emplace_back(encoding->ids.begin(), encoding->ids.end());
    }
  } else {
    prepared.token_ids = request.token_ids;
  }
  for (std::vector<int32_t>& ids : prepared.token_ids) {
    for (int32_t id : ids) {
      if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
        return InvalidRequestError(absl::StrCat("Token id ", id, " is outside the vocabulary [0, ", vocab_size, ")."), "input");
      }
    }
    if (ids.empty()) return InvalidRequestError("An input is empty: it has no tokens.", "input");
    if (static_cast<int>(ids.size()) > max_model_len) {
      return InvalidRequestError(absl::StrCat("An input has ", ids.size(), " tokens; this model's maximum is ",
                                              max_model_len, "."),
                                 "input");
    }
    prepared.prompt_tokens += static_cast<int>(ids.size());
  }
  return prepared;
}

absl::StatusOr<std::vector<std::vector<float>>> RunEmbedding(Gateway& gateway, const std::string& model,
                                                             const std::string& request_id,
                                                             const PreparedEmbedding& prepared) {
  absl::StatusOr<Router::Pick> pick = gateway.router().Choose(model, {});
  if (!pick.ok()) return pick.status();
  flotilla::v1::WorkerEmbedRequest worker_request;
  worker_request.set_request_id(request_id);
  for (const std::vector<int32_t>& ids : prepared.token_ids) {
    worker_request.add_inputs()->mutable_ids()->Assign(ids.begin(), ids.end());
  }
  grpc::ClientContext context;
  flotilla::v1::WorkerEmbedResponse worker_response;
  const grpc::Status status = gateway.WorkerStub(pick->address)->Embed(&context, worker_request, &worker_response);
  gateway.router().Release(pick->replica_id);
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<std::vector<float>> embeddings;
  for (const flotilla::v1::Embedding& embedding : worker_response.embeddings()) {
    embeddings.emplace_back(embedding.values().begin(), embedding.values().end());
  }
  return embeddings;
}

}  // namespace flotilla::gateway
