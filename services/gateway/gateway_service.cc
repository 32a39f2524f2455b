#include "services/gateway/gateway_service.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "services/common/queued_write_reactor.h"
#include "services/common/rejecting_reactor.h"
#include "services/common/request_id.h"
#include "services/common/status.h"
#include "services/gateway/generation.h"
#include "services/gateway/openai_api.h"
#include "services/gateway/prepare.h"

namespace flotilla::gateway {
namespace {

// The gRPC request in the struct the OpenAI parsers fill, with the same bounds.
absl::StatusOr<GenerationRequest> FromProto(const flotilla::v1::GenerateRequest& proto) {
  GenerationRequest request;
  request.endpoint = Endpoint::kChatCompletions;
  request.model = proto.model();
  if (request.model.empty()) return absl::InvalidArgumentError("Generate: model is empty");
  switch (proto.input_case()) {
    case flotilla::v1::GenerateRequest::kPrompt:
      request.endpoint = Endpoint::kCompletions;
      request.prompt = proto.prompt();
      break;
    case flotilla::v1::GenerateRequest::kChat: {
      nlohmann::ordered_json messages = nlohmann::ordered_json::array();
      for (const flotilla::v1::ChatMessage& message : proto.chat().messages()) {
        nlohmann::ordered_json entry = nlohmann::ordered_json::object();
        if (!message.extra_json().empty()) {
          entry = nlohmann::ordered_json::parse(message.extra_json(), nullptr, false);
          if (entry.is_discarded() || !entry.is_object()) {
            return absl::InvalidArgumentError("Generate: a chat message's extra_json is not a JSON object");
          }
        }
        entry["role"] = message.role();
        if (!entry.contains("content")) entry["content"] = message.content();
        messages.push_back(std::move(entry));
      }
      if (messages.empty()) return absl::InvalidArgumentError("Generate: chat has no messages");
      request.messages = std::move(messages);
      break;
    }
    case flotilla::v1::GenerateRequest::kPromptIds:
      request.endpoint = Endpoint::kCompletions;
      request.prompt_token_ids = std::vector<int32_t>(proto.prompt_ids().ids().begin(), proto.prompt_ids().ids().end());
      break;
    default:
      return absl::InvalidArgumentError("Generate: set one of prompt, chat or prompt_ids");
  }
  const flotilla::v1::SamplingParameters& sampling = proto.sampling();
  if (sampling.max_new_tokens() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Generate: max_new_tokens must be positive (0: up to the context), got ",
                                                   sampling.max_new_tokens()));
  }
  if (sampling.max_new_tokens() > 0) request.max_tokens = sampling.max_new_tokens();
  if (sampling.temperature() < 0 || sampling.temperature() > 2) {
    return absl::InvalidArgumentError(absl::StrCat("Generate: temperature must be in [0, 2], got ", sampling.temperature()));
  }
  if (sampling.top_p() < 0 || sampling.top_p() > 1) {
    return absl::InvalidArgumentError(absl::StrCat("Generate: top_p must be in [0, 1], got ", sampling.top_p()));
  }
  // Zero means "greedy" here (the proto has no presence bits for floats).
  request.temperature = sampling.temperature();
  if (sampling.top_p() > 0) request.top_p = sampling.top_p();
  if (sampling.top_k() != 0) request.top_k = sampling.top_k();
  if (sampling.min_p() > 0) request.min_p = sampling.min_p();
  if (sampling.repetition_penalty() > 0) request.repetition_penalty = sampling.repetition_penalty();
  request.presence_penalty = sampling.presence_penalty();
  request.frequency_penalty = sampling.frequency_penalty();
  if (sampling.has_seed()) request.seed = static_cast<int64_t>(sampling.seed());
  request.stop.assign(sampling.stop().begin(), sampling.stop().end());
  request.min_tokens = sampling.min_tokens();
  request.ignore_eos = sampling.ignore_eos();
  request.stop_token_ids.assign(sampling.stop_token_ids().begin(), sampling.stop_token_ids().end());
  request.priority = proto.priority();
  request.request_id = proto.request_id();
  return request;
}

class GenerateReactor final : public QueuedWriteReactor<flotilla::v1::GenerateResponse> {
 public:
  GenerateReactor(Gateway& gateway, grpc::CallbackServerContext* context, const flotilla::v1::GenerateRequest& proto)
      : gateway_(gateway) {
    absl::StatusOr<GenerationRequest> request = FromProto(proto);
    if (!request.ok()) {
      Close(ToGrpcStatus(request.status()));
      return;
    }
    if (request->request_id.empty()) request->request_id = RequestIdOf(context);
    absl::StatusOr<Gateway::Admission> admission = gateway_.Admit(request->model);
    if (!admission.ok()) {
      Close(ToGrpcStatus(admission.status()));
      return;
    }
    ApiResult<PreparedGeneration> prepared = PrepareGeneration(gateway_, *request);
    if (!prepared.ok()) {
      Close(ToGrpcStatus(StatusFromApiError(prepared.error())));
      return;
    }
    auto run = std::make_shared<GenerationRun>(gateway_, prepared->job);
    {
      std::lock_guard<std::mutex> lock(run_mutex_);
      run_ = run;
    }
    auto admission_holder = std::make_shared<Gateway::Admission>(std::move(*admission));
    std::thread([this, run, admission_holder] {
      int prompt_tokens = 0;
      int completion_tokens = 0;
      grpc::Status status;
      while (std::optional<ChoiceDelta> delta = run->Next(std::chrono::hours(24))) {
        if (!delta->error.ok()) {
          status = ToGrpcStatus(delta->error);
          run->Cancel();
          break;
        }
        if (!delta->tokens.empty()) admission_holder->MarkStarted();
        completion_tokens += static_cast<int>(delta->tokens.size());
        prompt_tokens = std::max(prompt_tokens, delta->prompt_tokens);
        Update([&](flotilla::v1::GenerateResponse& response) {
          for (const auto& token : delta->tokens) response.add_token_ids(token.token_id());
          response.mutable_text()->append(delta->text);
          if (!delta->finish_reason.empty()) {
            response.set_finish_reason(delta->finish_reason);
            response.set_prompt_tokens(delta->prompt_tokens);
            response.set_completion_tokens(completion_tokens);
          }
        });
      }
      Close(status);
    }).detach();
  }

 private:
  void OnCancelled() override {
    std::lock_guard<std::mutex> lock(run_mutex_);
    if (run_ != nullptr) run_->Cancel();
  }

  Gateway& gateway_;
  std::mutex run_mutex_;
  std::shared_ptr<GenerationRun> run_;  // guarded by run_mutex_
};

flotilla::v1::Tensor FloatVector(const std::vector<float>& values) {
  flotilla::v1::Tensor tensor;
  tensor.set_dtype(flotilla::v1::DATA_TYPE_FLOAT32);
  tensor.add_shape(static_cast<int64_t>(values.size()));
  tensor.mutable_data()->assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return tensor;
}

// config.json's id2label, when the folder has one.
std::vector<std::string> LabelsOf(const std::string& directory, size_t num_labels) {
  std::vector<std::string> labels(num_labels);
  for (size_t i = 0; i < num_labels; ++i) labels[i] = absl::StrCat("LABEL_", i);
  std::ifstream stream(std::filesystem::path(directory) / "config.json");
  nlohmann::json config = nlohmann::json::parse(stream, nullptr, false);
  if (config.is_discarded() || !config.contains("id2label") || !config["id2label"].is_object()) return labels;
  for (const auto& [key, value] : config["id2label"].items()) {
    size_t index = 0;
    if (absl::SimpleAtoi(key, &index) && index < num_labels && value.is_string()) labels[index] = value.get<std::string>();
  }
  return labels;
}

// Embed and Classify: prepare, run on a replica, convert.
absl::Status EmbedTexts(Gateway& gateway, const std::string& model, const google::protobuf::RepeatedPtrField<std::string>& texts,
                        const std::string& task, const std::string& request_id, std::vector<std::vector<float>>* vectors,
                        PreparedEmbedding* prepared_out) {
  EmbeddingRequest request;
  request.model = model;
  request.texts.assign(texts.begin(), texts.end());
  request.request_id = request_id;
  if (request.texts.empty()) return absl::InvalidArgumentError(absl::StrCat(task == "embed" ? "Embed" : "Classify", ": no texts"));
  absl::StatusOr<Gateway::Admission> admission = gateway.Admit(model);
  if (!admission.ok()) return admission.status();
  ApiResult<PreparedEmbedding> prepared = PrepareEmbedding(gateway, request, task);
  if (!prepared.ok()) return StatusFromApiError(prepared.error());
  absl::StatusOr<std::vector<std::vector<float>>> result = RunEmbedding(gateway, model, request_id, *prepared);
  if (!result.ok()) return result.status();
  *vectors = *std::move(result);
  *prepared_out = *std::move(prepared);
  return absl::OkStatus();
}

}  // namespace

grpc::ServerWriteReactor<flotilla::v1::GenerateResponse>* GatewayServiceImpl::Generate(
    grpc::CallbackServerContext* context, const flotilla::v1::GenerateRequest* request) {
  return new GenerateReactor(gateway_, context, *request);
}

grpc::ServerUnaryReactor* GatewayServiceImpl::Embed(grpc::CallbackServerContext* context,
                                                    const flotilla::v1::EmbedRequest* request,
                                                    flotilla::v1::EmbedResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::thread([this, context, request, response, reactor] {
    std::vector<std::vector<float>> vectors;
    PreparedEmbedding prepared;
    absl::Status status = EmbedTexts(gateway_, request->model(), request->texts(), "embed", RequestIdOf(context),
                                     &vectors, &prepared);
    if (status.ok()) {
      for (const std::vector<float>& vector : vectors) *response->add_embeddings() = FloatVector(vector);
      response->set_prompt_tokens(prepared.prompt_tokens);
    }
    reactor->Finish(ToGrpcStatus(status));
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* GatewayServiceImpl::Classify(grpc::CallbackServerContext* context,
                                                       const flotilla::v1::ClassifyRequest* request,
                                                       flotilla::v1::ClassifyResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::thread([this, context, request, response, reactor] {
    std::vector<std::vector<float>> vectors;
    PreparedEmbedding prepared;
    absl::Status status = EmbedTexts(gateway_, request->model(), request->texts(), "classify", RequestIdOf(context),
                                     &vectors, &prepared);
    if (status.ok()) {
      const std::vector<std::string> labels =
          LabelsOf(prepared.processors.handle.model->directory, vectors.empty() ? 0 : vectors.front().size());
      for (const std::vector<float>& vector : vectors) {
        *response->add_logits() = FloatVector(vector);
        const size_t best = std::max_element(vector.begin(), vector.end()) - vector.begin();
        response->add_labels(best < labels.size() ? labels[best] : absl::StrCat("LABEL_", best));
      }
    }
    reactor->Finish(ToGrpcStatus(status));
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* GatewayServiceImpl::ListModels(grpc::CallbackServerContext* context,
                                                         const flotilla::v1::ListModelsRequest*,
                                                         flotilla::v1::ListModelsResponse* response) {
  for (const Router::ModelSummary& summary : gateway_.router().Models()) {
    flotilla::v1::ServedModel* model = response->add_models();
    model->set_name(summary.name);
    model->set_task(summary.info.task());
    *model->mutable_source() = summary.info.model();
    model->set_commit_id(summary.info.commit_id());
    model->set_max_model_len(summary.info.max_model_len());
    model->set_replicas(summary.replicas);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace flotilla::gateway
