#include "services/worker/worker_service.h"

#include <thread>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <torch/version.h>

#include "services/common/logging.h"
#include "services/common/queued_write_reactor.h"
#include "services/common/metrics.h"
#include "services/common/rejecting_reactor.h"
#include "services/common/request_id.h"
#include "services/common/status.h"
#include "services/common/tensor_proto.h"
#include "services/worker/sequence.h"

namespace flotilla {
namespace {

using flotilla::v1::MatmulRequest;
using flotilla::v1::MatmulResponse;

struct WorkerMetrics {
  prometheus::Counter& matmul_products;
  prometheus::Counter& matmul_flops;
  prometheus::Gauge& matmul_in_flight;

  static WorkerMetrics& Get() {
    static WorkerMetrics* metrics = new WorkerMetrics{
        prometheus::BuildCounter()
            .Name("flotilla_worker_matmul_products_total")
            .Help("Matrix products computed by the Matmul RPC")
            .Register(MetricsRegistry())
            .Add({}),
        prometheus::BuildCounter()
            .Name("flotilla_worker_matmul_flops_total")
            .Help("Floating-point operations (2*m*k*n per product) done by the Matmul RPC")
            .Register(MetricsRegistry())
            .Add({}),
        prometheus::BuildGauge()
            .Name("flotilla_worker_matmul_in_flight")
            .Help("Matmul calls being computed now")
            .Register(MetricsRegistry())
            .Add({}),
    };
    return *metrics;
  }
};

std::string ShapeText(const at::Tensor& tensor) {
  return absl::StrCat("[", absl::StrJoin(tensor.sizes(), ", "), "]");
}

absl::Status ComputeMatmul(const MatmulRequest& request, grpc::CallbackServerContext* context,
                           MatmulResponse* response) {
  absl::StatusOr<at::Tensor> a = TensorFromProto(request.a());
  if (!a.ok()) return absl::InvalidArgumentError(absl::StrCat("Matmul: a: ", a.status().message()));
  absl::StatusOr<at::Tensor> b = TensorFromProto(request.b());
  if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat("Matmul: b: ", b.status().message()));
  if (a->dim() != 2 || b->dim() != 2 || a->scalar_type() != at::kFloat || b->scalar_type() != at::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat("Matmul: expected two 2-D float32 tensors but got a ",
                                                   ShapeText(*a), " ", c10::toString(a->scalar_type()), " and b ",
                                                   ShapeText(*b), " ", c10::toString(b->scalar_type())));
  }
  if (a->size(1) != b->size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("Matmul: a is ", ShapeText(*a), " and b is ", ShapeText(*b),
                                                   ": a's columns must equal b's rows"));
  }
  const int repeat = std::max(1, request.repeat());
  const double flops_per_product = 2.0 * a->size(0) * a->size(1) * b->size(1);
  WorkerMetrics& metrics = WorkerMetrics::Get();
  at::Tensor product;
  for (int iteration = 0; iteration < repeat; ++iteration) {
    if (context->IsCancelled()) return absl::CancelledError("Matmul: cancelled by the client or by drain");
    product = at::matmul(*a, *b);
    metrics.matmul_products.Increment();
    metrics.matmul_flops.Increment(flops_per_product);
  }
  return TensorToProto(product, response->mutable_product());
}

}  // namespace

WorkerServiceImpl::WorkerServiceImpl(std::shared_ptr<ServedModel> served) : served_(std::move(served)) {
  WorkerMetrics::Get();
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Matmul(grpc::CallbackServerContext* context,
                                                    const MatmulRequest* request, MatmulResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Tensor work leaves gRPC's callback threads, which must never block for long.
  std::thread([context, request, response, reactor] {
    WorkerMetrics& metrics = WorkerMetrics::Get();
    metrics.matmul_in_flight.Increment();
    absl::Status status;
    try {
      status = ComputeMatmul(*request, context, response);
    } catch (const c10::Error& error) {
      status = absl::InternalError(absl::StrCat("Matmul: ", error.what_without_backtrace()));
    }
    metrics.matmul_in_flight.Decrement();
    reactor->Finish(ToGrpcStatus(status));
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::GetWorkerInfo(grpc::CallbackServerContext* context,
                                                           const flotilla::v1::GetWorkerInfoRequest*,
                                                           flotilla::v1::WorkerInfo* response) {
  if (served_ != nullptr) {
    *response = served_->info;
  } else {
    response->set_world_size(1);
    response->set_device("cpu");
    response->set_torch_version(TORCH_VERSION);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::LoadModel(grpc::CallbackServerContext* context,
                                                       const flotilla::v1::LoadModelRequest*,
                                                       flotilla::v1::LoadModelResponse*) {
  // One worker group serves one model for its whole life (its KV pool is sized for it); a new
  // model is a new group, started by `flotilla serve` or a Deployment.
  return RejectUnary(context, ToGrpcStatus(absl::FailedPreconditionError(
                                  served_ != nullptr
                                      ? absl::StrCat("LoadModel: this worker serves ", served_->info.served_model_name(),
                                                     " for its whole life; start another with `flotilla serve`")
                                      : "LoadModel: start the worker with --model (or use `flotilla serve MODEL`)")));
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Forward(grpc::CallbackServerContext* context,
                                                     const flotilla::v1::ForwardRequest* request,
                                                     flotilla::v1::ForwardResponse* response) {
  if (served_ == nullptr) {
    return RejectUnary(context, ToGrpcStatus(absl::FailedPreconditionError("Forward: this worker has no model (start it with --model)")));
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::thread([served = served_, request, response, reactor] {
    c10::InferenceMode inference_mode;
    absl::Status status;
    try {
      absl::StatusOr<at::Tensor> input_ids = TensorFromProto(request->input_ids());
      if (!input_ids.ok()) {
        status = absl::InvalidArgumentError(absl::StrCat("Forward: input_ids: ", input_ids.status().message()));
      } else {
        models::ForwardInputs inputs;
        inputs.input_ids = input_ids->to(served->device, at::kLong);
        inputs.output_hidden_states = request->output_hidden_states();
        if (request->has_attention_mask()) {
          absl::StatusOr<at::Tensor> mask = TensorFromProto(request->attention_mask());
          if (!mask.ok()) {
            status = absl::InvalidArgumentError(absl::StrCat("Forward: attention_mask: ", mask.status().message()));
          } else {
            inputs.attention_mask = mask->to(served->device, at::kLong);
          }
        }
        if (status.ok()) {
          std::lock_guard<std::mutex> lock(served->forward_mutex);
          models::ModelOutput output = served->model->Forward(inputs);
          if (output.logits.defined()) {
            status = TensorToProto(output.logits.to(at::kCPU, at::kFloat), response->mutable_logits());
          }
          for (const at::Tensor& hidden : output.hidden_states) {
            if (!status.ok()) break;
            status = TensorToProto(hidden.to(at::kCPU, at::kFloat), response->add_hidden_states());
          }
        }
      }
    } catch (const c10::Error& error) {
      status = absl::InvalidArgumentError(absl::StrCat("Forward: ", error.what_without_backtrace()));
    }
    reactor->Finish(ToGrpcStatus(status));
  }).detach();
  return reactor;
}

namespace {

absl::StatusOr<std::shared_ptr<worker::Sequence>> SequenceFromRequest(const flotilla::v1::WorkerGenerateRequest& request,
                                                                      int64_t vocab_size) {
  if (request.request_id().empty()) return absl::InvalidArgumentError("Generate: request_id is empty");
  if (request.prompt_token_ids().empty()) return absl::InvalidArgumentError("Generate: prompt_token_ids is empty");
  if (request.max_tokens() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("Generate: max_tokens must be at least 1, got ", request.max_tokens()));
  }
  auto check_id = [vocab_size](int32_t id, const char* field) -> absl::Status {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("Generate: ", field, ": token id ", id,
                                                     " is outside the vocabulary [0, ", vocab_size, ")"));
    }
    return absl::OkStatus();
  };
  auto sequence = std::make_shared<worker::Sequence>();
  sequence->request_id = request.request_id();
  for (int32_t id : request.prompt_token_ids()) {
    if (absl::Status status = check_id(id, "prompt_token_ids"); !status.ok()) return status;
    sequence->prompt_token_ids.push_back(id);
  }
  for (int32_t id : request.generated_token_ids()) {
    if (absl::Status status = check_id(id, "generated_token_ids"); !status.ok()) return status;
    sequence->output_token_ids.push_back(id);
  }
  sequence->num_carried_over_tokens = request.generated_token_ids_size();
  if (request.generated_token_ids_size() >= request.max_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat("Generate: ", request.generated_token_ids_size(),
                                                   " tokens carried over already reach max_tokens ", request.max_tokens()));
  }
  sequence->max_tokens = request.max_tokens();
  sequence->min_tokens = request.min_tokens();
  sequence->stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  sequence->ignore_eos = request.ignore_eos();
  sequence->priority = request.priority();
  const flotilla::v1::TokenSampling& sampling = request.sampling();
  worker::SamplingOptions& options = sequence->sampling;
  options.temperature = sampling.temperature();
  options.top_p = sampling.top_p();
  options.top_k = sampling.top_k();
  options.min_p = sampling.min_p();
  options.repetition_penalty = sampling.repetition_penalty();
  options.presence_penalty = sampling.presence_penalty();
  options.frequency_penalty = sampling.frequency_penalty();
  for (const auto& [token_id, bias] : sampling.logit_bias()) {
    if (absl::Status status = check_id(token_id, "logit_bias"); !status.ok()) return status;
    options.logit_bias.emplace_back(token_id, bias);
  }
  if (sampling.has_seed()) options.seed = sampling.seed();
  options.return_logprobs = sampling.return_logprobs();
  if (sampling.top_logprobs() < 0 || sampling.top_logprobs() > 20) {
    return absl::InvalidArgumentError(absl::StrCat("Generate: top_logprobs must be in [0, 20], got ", sampling.top_logprobs()));
  }
  options.top_logprobs = sampling.top_logprobs();
  return sequence;
}

void AppendOutput(const worker::EngineOutput& output, flotilla::v1::WorkerGenerateResponse& response) {
  for (const worker::SampledToken& token : output.tokens) {
    flotilla::v1::GeneratedToken* generated = response.add_tokens();
    generated->set_token_id(token.token_id);
    generated->set_logprob(token.logprob);
    for (const auto& [token_id, logprob] : token.top_logprobs) {
      flotilla::v1::TokenLogprob* top = generated->add_top_logprobs();
      top->set_token_id(token_id);
      top->set_logprob(logprob);
    }
  }
  if (!output.finish_reason.empty()) response.set_finish_reason(output.finish_reason);
}

// One reactor per Generate call. The engine guarantees one final output per request, after which
// the reactor closes; a cancelled call aborts the request and the engine's final output closes it.
class GenerateReactor final : public QueuedWriteReactor<flotilla::v1::WorkerGenerateResponse> {
 public:
  GenerateReactor(std::shared_ptr<ServedModel> served, const flotilla::v1::WorkerGenerateRequest& request)
      : served_(std::move(served)), request_id_(request.request_id()) {
    absl::StatusOr<std::shared_ptr<worker::Sequence>> sequence = SequenceFromRequest(request, served_->info.vocab_size());
    if (!sequence.ok()) {
      Close(ToGrpcStatus(sequence.status()));
      return;
    }
    const int prompt_tokens = request.prompt_token_ids_size();
    absl::Status added = served_->engine->Add(*sequence, [this, prompt_tokens](const worker::EngineOutput& output) {
      Update([&](flotilla::v1::WorkerGenerateResponse& response) {
        if (first_) {
          response.set_prompt_tokens(prompt_tokens);
          response.set_cached_prompt_tokens(output.cached_prompt_tokens);
          first_ = false;
        }
        AppendOutput(output, response);
      });
      if (!output.error.empty()) {
        Close(grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("Generate: ", output.error)));
      } else if (!output.finish_reason.empty()) {
        Close(grpc::Status::OK);
      }
    });
    if (!added.ok()) Close(ToGrpcStatus(added));
  }

 private:
  void OnCancelled() override { served_->engine->Abort(request_id_); }

  std::shared_ptr<ServedModel> served_;
  std::string request_id_;
  bool first_ = true;  // only the engine thread touches it
};

}  // namespace

grpc::ServerWriteReactor<flotilla::v1::WorkerGenerateResponse>* WorkerServiceImpl::Generate(
    grpc::CallbackServerContext* context, const flotilla::v1::WorkerGenerateRequest* request) {
  if (served_ == nullptr || served_->engine == nullptr) {
    return Reject<grpc::ServerWriteReactor<flotilla::v1::WorkerGenerateResponse>>(ToGrpcStatus(absl::FailedPreconditionError(
        served_ == nullptr ? "Generate: this worker has no model (start it with --model)"
                           : absl::StrCat("Generate: ", served_->info.served_model_name(), " is served for task ",
                                          served_->info.task(), ", not generation"))));
  }
  return new GenerateReactor(served_, *request);
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Abort(grpc::CallbackServerContext* context,
                                                   const flotilla::v1::AbortRequest* request,
                                                   flotilla::v1::AbortResponse* response) {
  if (served_ != nullptr && served_->engine != nullptr) {
    for (const std::string& request_id : request->request_ids()) served_->engine->Abort(request_id);
    response->set_aborted(request->request_ids_size());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Embed(grpc::CallbackServerContext* context,
                                                   const flotilla::v1::WorkerEmbedRequest* request,
                                                   flotilla::v1::WorkerEmbedResponse* response) {
  if (served_ == nullptr || (served_->info.task() != "embed" && served_->info.task() != "classify")) {
    return RejectUnary(context, ToGrpcStatus(absl::FailedPreconditionError(
                                    served_ == nullptr ? "Embed: this worker has no model (start it with --model)"
                                                       : absl::StrCat("Embed: ", served_->info.served_model_name(),
                                                                      " is served for task ", served_->info.task()))));
  }
  if (request->inputs().empty()) return RejectUnary(context, ToGrpcStatus(absl::InvalidArgumentError("Embed: no inputs")));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::thread([served = served_, request, response, reactor] {
    c10::InferenceMode inference_mode;
    absl::Status status;
    try {
      // One padded batch, right-padded with an attention mask (pad id 0 is masked out).
      int64_t longest = 0;
      int64_t tokens = 0;
      for (const auto& input : request->inputs()) {
        longest = std::max<int64_t>(longest, input.ids_size());
        tokens += input.ids_size();
        if (input.ids().empty()) status = absl::InvalidArgumentError("Embed: an input has no tokens");
        if (input.ids_size() > served->info.max_model_len()) {
          status = absl::InvalidArgumentError(absl::StrCat("Embed: an input has ", input.ids_size(),
                                                           " tokens but the model's maximum is ", served->info.max_model_len()));
        }
      }
      if (status.ok()) {
        const int64_t batch = request->inputs_size();
        at::Tensor input_ids = at::zeros({batch, longest}, at::kLong);
        at::Tensor attention_mask = at::zeros({batch, longest}, at::kLong);
        auto id_values = input_ids.accessor<int64_t, 2>();
        auto mask_values = attention_mask.accessor<int64_t, 2>();
        for (int64_t row = 0; row < batch; ++row) {
          const auto& ids = request->inputs(static_cast<int>(row)).ids();
          for (int64_t column = 0; column < ids.size(); ++column) {
            id_values[row][column] = ids[static_cast<int>(column)];
            mask_values[row][column] = 1;
          }
        }
        input_ids = input_ids.to(served->device);
        attention_mask = attention_mask.to(served->device);
        models::ForwardInputs inputs{.input_ids = input_ids, .attention_mask = attention_mask};
        at::Tensor vectors;
        {
          std::lock_guard<std::mutex> lock(served->forward_mutex);
          models::ModelOutput output = served->model->Forward(inputs);
          if (served->info.task() == "classify") {
            vectors = output.logits;
          } else {
            models::SentenceEmbeddingConfig pooling = served->pooling;
            if (request->normalize()) pooling.normalize = true;
            vectors = models::SentenceEmbeddings(output.last_hidden_state, attention_mask, pooling);
          }
        }
        vectors = vectors.to(at::kCPU, at::kFloat).contiguous();
        for (int64_t row = 0; row < batch; ++row) {
          const float* data = vectors[row].data_ptr<float>();
          response->add_embeddings()->mutable_values()->Assign(data, data + vectors.size(1));
        }
        response->set_prompt_tokens(static_cast<int>(tokens));
      }
    } catch (const c10::Error& error) {
      status = absl::InvalidArgumentError(absl::StrCat("Embed: ", error.what_without_backtrace()));
    }
    reactor->Finish(ToGrpcStatus(status));
  }).detach();
  return reactor;
}

flotilla::v1::WorkerLoad LoadToProto(const worker::EngineLoad& load) {
  flotilla::v1::WorkerLoad proto;
  proto.set_num_requests_running(load.num_requests_running);
  proto.set_num_requests_waiting(load.num_requests_waiting);
  proto.set_kv_blocks_used(load.kv_blocks_used);
  proto.set_kv_blocks_total(load.kv_blocks_total);
  proto.set_prefix_cache_queries(load.prefix_cache_queries);
  proto.set_prefix_cache_hits(load.prefix_cache_hits);
  proto.set_waiting_tokens(load.waiting_tokens);
  proto.set_draining(load.draining);
  return proto;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::GetLoad(grpc::CallbackServerContext* context,
                                                     const flotilla::v1::GetLoadRequest*,
                                                     flotilla::v1::WorkerLoad* response) {
  if (served_ != nullptr && served_->engine != nullptr) *response = LoadToProto(served_->engine->Load());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace flotilla
