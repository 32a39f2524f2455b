// The worker's gRPC service: rank 0 of a tensor-parallel replica. Today it answers Matmul (one
// LibTorch op end to end, the stack's smoke test) and GetWorkerInfo; model loading and steps
// arrive with issue #5 and the serving work.
//
// Thread-safety: handlers may run concurrently; the service holds no mutable state besides
// Prometheus metrics, which are thread-safe.
#pragma once

#include "flotilla/v1/worker.grpc.pb.h"

namespace flotilla {

class WorkerServiceImpl final : public flotilla::v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl();

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
};

}  // namespace flotilla
