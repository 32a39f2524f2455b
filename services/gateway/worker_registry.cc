#include "services/gateway/worker_registry.h"

#include "services/common/logging.h"

namespace flotilla::gateway {
namespace {

class RegisterReactor final : public grpc::ServerBidiReactor<flotilla::v1::WorkerReport, flotilla::v1::RegistrationEvent> {
 public:
  explicit RegisterReactor(Gateway& gateway) : gateway_(gateway) { StartRead(&report_); }

  void OnReadDone(bool ok) override {
    if (!ok) return Finish(grpc::Status::OK);  // the worker closed its side (drain) or went away
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
    if (refused_) Finish(grpc::Status::OK);
  }

  void OnDone() override {
    if (replica_id_ != 0) {
      gateway_.router().Remove(replica_id_);
      gateway_.RefreshRouterGauges();
      LogInfo("worker gone", {{"address", report_.address()}, {"replica_id", replica_id_}});
    }
    delete this;
  }

 private:
  Gateway& gateway_;
  flotilla::v1::WorkerReport report_;
  flotilla::v1::RegistrationEvent event_;
  int64_t replica_id_ = 0;
  bool refused_ = false;
};

}  // namespace

grpc::ServerBidiReactor<flotilla::v1::WorkerReport, flotilla::v1::RegistrationEvent>* WorkerRegistryImpl::Register(
    grpc::CallbackServerContext*) {
  return new RegisterReactor(gateway_);
}

}  // namespace flotilla::gateway
