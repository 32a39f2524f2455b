// The WorkerRegistry service: workers open Register streams to announce themselves and report
// their load; the stream's end removes the replica from the router. One reactor per stream.
//
// Thread-safety: gRPC runs reactors on its threads; the router is thread-safe.
#pragma once

#include "flotilla/v1/gateway.grpc.pb.h"
#include "services/gateway/gateway.h"

namespace flotilla::gateway {

class WorkerRegistryImpl final : public flotilla::v1::WorkerRegistry::CallbackService {
 public:
  explicit WorkerRegistryImpl(Gateway& gateway) : gateway_(gateway) {}
  grpc::ServerBidiReactor<flotilla::v1::WorkerReport, flotilla::v1::RegistrationEvent>* Register(
      grpc::CallbackServerContext* context) override;

 private:
  Gateway& gateway_;
};

}  // namespace flotilla::gateway
