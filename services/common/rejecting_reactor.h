// Reactors that answer a call with one status and nothing else: for streaming RPCs that a later
// issue fills, or that fail before any message is exchanged.
//
//   grpc::ServerBidiReactor<StepRequest, StepResponse>* Step(grpc::CallbackServerContext*) override {
//     return flotilla::Reject<grpc::ServerBidiReactor<StepRequest, StepResponse>>(
//         flotilla::NotYetImplemented("WorkerService.Step", "the serving issue"));
//   }
#pragma once

#include <grpcpp/support/server_callback.h>
#include <grpcpp/support/status.h>

namespace flotilla {

template <typename Reactor>
class RejectingReactor final : public Reactor {
 public:
  explicit RejectingReactor(const grpc::Status& status) { this->Finish(status); }
  // gRPC calls OnDone once the status is sent; the reactor owns itself until then.
  void OnDone() override { delete this; }
};

template <typename Reactor>
Reactor* Reject(const grpc::Status& status) {
  return new RejectingReactor<Reactor>(status);
}

// For unary calls: finishes the context's default reactor with `status`.
inline grpc::ServerUnaryReactor* RejectUnary(grpc::CallbackServerContext* context, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace flotilla
