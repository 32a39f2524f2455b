// The WorkerRegistry service: workers open Register streams to announce themselves and report
// their load; the stream's end removes the replica from the router. One reactor per stream.
// CloseAll ends every stream (the gateway is going away): a worker reconnects to its other
// gateways' streams as usual, and the server's shutdown does not wait its whole drain deadline on
// streams that never end by themselves.
//
// Thread-safety: gRPC runs reactors on its threads; the router is thread-safe; CloseAll may run on
// any thread.
#pragma once

#include <mutex>
#include <set>

#include "flotilla/v1/gateway.grpc.pb.h"
#include "services/gateway/gateway.h"

namespace flotilla::gateway {

class WorkerRegistryImpl final : public flotilla::v1::WorkerRegistry::CallbackService {
 public:
  explicit WorkerRegistryImpl(Gateway& gateway) : gateway_(gateway) {}
  grpc::ServerBidiReactor<flotilla::v1::WorkerReport, flotilla::v1::RegistrationEvent>* Register(
      grpc::CallbackServerContext* context) override;

  void CloseAll();

  // The reactors' side (worker_registry.cc).
  class Stream {
   public:
    virtual ~Stream() = default;
    virtual void Close() = 0;
  };
  void Track(Stream* stream);
  void Untrack(Stream* stream);

 private:
  Gateway& gateway_;
  std::mutex mutex_;
  std::set<Stream*> streams_;  // guarded by mutex_
  bool closed_ = false;        // guarded by mutex_
};

}  // namespace flotilla::gateway
