#include "services/gateway/worker_registry.h"

#include <atomic>

#include "services/common/logging.h"

namespace flotilla::gateway {
namespace {

class RegisterReactor final : public grpc::ServerBidiReactor<flotilla::v1::WorkerReport, flotilla::v1::RegistrationEvent>,
                              public WorkerRegistryImpl::Stream {
 public:
  RegisterReactor(Gateway& gateway, WorkerRegistryImpl& registry) : gateway_(gateway), registry_(registry) {
    StartRead(&report_);
    registry_.Track(this);  // after the read: a Close from here on finishes a started stream
  }

  // The gateway is going away: end the stream (its pending read then completes, not ok).
  void Close() override { FinishOnce(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the gateway is shutting down")); }

  void OnReadDone(bool ok) override {
    if (!ok) return FinishOnce(grpc::Status::OK);  // the worker closed its side (drain) or went away
    if (replica_id_ == 0) {
      absl::StatusOr<int64_t> id = gateway_.router().Add(report_);
      event_.set_accepted(id.ok());
      if (!id.ok()) {
        event_.set_message(std::string(id.status().message()));
        LogWarning("worker registration refused", {{"address", report_.address()}, {"reason", event_.message()}});
        StartWrite(&event_);
        refused_ = true;
        return;
      }
      replica_id_ = *id;
      LogInfo("worker registered", {{"model", report_.info().served_model_name()}, {"address", report_.address()},
                                    {"replica", report_.replica()}, {"task", report_.info().task()}});
      gateway_.RefreshRouterGauges();
      StartWrite(&event_);
    } else {
      gateway_.router().UpdateLoad(replica_id_, report_.load());
      gateway_.RefreshRouterGauges();
    }
    StartRead(&report_);
  }

  void OnWriteDone(bool) override {
    if (refused_) FinishOnce(grpc::Status::OK);
  }

  void OnDone() override {
    registry_.Untrack(this);
    if (replica_id_ != 0) {
      gateway_.router().Remove(replica_id_);
      gateway_.RefreshRouterGauges();
      LogInfo("worker gone", {{"address", report_.address()}, {"replica_id", replica_id_}});
    }
    delete this;
  }

 private:
  void FinishOnce(const grpc::Status& status) {
    if (!finished_.exchange(true)) Finish(status);
  }

  Gateway& gateway_;
  WorkerRegistryImpl& registry_;
  std::atomic<bool> finished_{false};
  flotilla::v1::WorkerReport report_;
  flotilla::v1::RegistrationEvent event_;
  int64_t replica_id_ = 0;
  bool refused_ = false;
};

}  // namespace

grpc::ServerBidiReactor<flotilla::v1::WorkerReport, flotilla::v1::RegistrationEvent>* WorkerRegistryImpl::Register(
    grpc::CallbackServerContext*) {
  return new RegisterReactor(gateway_, *this);
}

void WorkerRegistryImpl::Track(Stream* stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  streams_.insert(stream);
  if (closed_) stream->Close();
}

void WorkerRegistryImpl::Untrack(Stream* stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  streams_.erase(stream);
}

void WorkerRegistryImpl::CloseAll() {
  // Under the lock: a stream cannot be untracked (and deleted) while it is being closed.
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  for (Stream* stream : streams_) stream->Close();
}

}  // namespace flotilla::gateway
