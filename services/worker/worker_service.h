// The worker's gRPC service: rank 0 of a tensor-parallel replica. With a model (flotilla-worker
// --model) it is an engine: Generate streams the tokens the continuous-batching loop samples for
// one request, Abort ends requests, Embed pools encoder outputs, GetLoad reports what a router
// needs. Without one it answers Matmul and GetWorkerInfo (the stack's smoke test).
//
// Handlers are thin: they validate, convert between protobuf and the engine's types, and never
// run tensor work on gRPC's callback threads.
//
// Thread-safety: handlers may run concurrently; the engine is thread-safe; Embed and Forward
// serialise on the served model's forward mutex.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "flotilla/v1/worker.grpc.pb.h"
#include "models/modeling_utils.h"
#include "models/pooling.h"
#include "services/worker/engine.h"

namespace flotilla {

// What `--model` loaded; shared by the service, the registration with the gateways and drain.
struct ServedModel {
  std::shared_ptr<models::PreTrainedModel> model;
  std::unique_ptr<worker::Engine> engine;        // task "generate"
  models::SentenceEmbeddingConfig pooling;       // task "embed"
  flotilla::v1::WorkerInfo info;
  c10::Device device = c10::Device(c10::kCPU);   // where the weights are (device.h)
  std::mutex forward_mutex;                      // Embed / Forward run outside the engine
};

class WorkerServiceImpl final : public flotilla::v1::WorkerService::CallbackService {
 public:
  explicit WorkerServiceImpl(std::shared_ptr<ServedModel> served = nullptr);

  grpc::ServerUnaryReactor* Matmul(grpc::CallbackServerContext* context,
                                   const flotilla::v1::MatmulRequest* request,
                                   flotilla::v1::MatmulResponse* response) override;
  grpc::ServerUnaryReactor* GetWorkerInfo(grpc::CallbackServerContext* context,
                                          const flotilla::v1::GetWorkerInfoRequest* request,
                                          flotilla::v1::WorkerInfo* response) override;
  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* context,
                                      const flotilla::v1::LoadModelRequest* request,
                                      flotilla::v1::LoadModelResponse* response) override;
  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context,
                                    const flotilla::v1::ForwardRequest* request,
                                    flotilla::v1::ForwardResponse* response) override;
  grpc::ServerWriteReactor<flotilla::v1::WorkerGenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const flotilla::v1::WorkerGenerateRequest* request) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context, const flotilla::v1::AbortRequest* request,
                                  flotilla::v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context,
                                  const flotilla::v1::WorkerEmbedRequest* request,
                                  flotilla::v1::WorkerEmbedResponse* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context, const flotilla::v1::GetLoadRequest* request,
                                    flotilla::v1::WorkerLoad* response) override;

 private:
  std::shared_ptr<ServedModel> served_;
};

// The engine's load as the proto the gateway reads.
flotilla::v1::WorkerLoad LoadToProto(const worker::EngineLoad& load);

}  // namespace flotilla
