// The gateway's state: the router (which replicas serve what), the processors of each served
// model (tokenizer, chat template, call settings — pulled from the registry by commit, never the
// weights), channels to workers, admission (backpressure, drain) and the client-side metrics.
// The gRPC services (gateway_service.cc) and the OpenAI routes (openai_routes.cc) are thin layers
// over it.
//
//   Gateway gateway({.registry_address = "127.0.0.1:7700", .cache_directory = "/tmp/gw"});
//   ASSIGN_OR_RETURN(Gateway::Admission admission, gateway.Admit("smollm2"));   // 429 / 503 / 404
//   ASSIGN_OR_RETURN(Gateway::ModelProcessors processors, gateway.Processors("smollm2"));
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "flotilla/v1/worker.grpc.pb.h"
#include "services/gateway/router.h"
#include "services/preprocess/model_store.h"

namespace flotilla::gateway {

struct GatewayOptions {
  std::string registry_address;
  std::string cache_directory;
  // Requests of one model that may wait (not yet producing tokens) before new ones get 429.
  int max_waiting_requests = 256;
  // How many times a choice may move to another replica when its worker's stream breaks.
  int max_migrations = 3;
};

class Gateway {
 public:
  explicit Gateway(GatewayOptions options);

  Router& router() { return router_; }
  const GatewayOptions& options() const { return options_; }

  // What the API layer needs of a served model to turn a request into token ids.
  struct ModelProcessors {
    flotilla::v1::WorkerInfo info;
    preprocess::ModelHandle handle;  // tokenizer, chat template (kept alive by the handle)
  };
  absl::StatusOr<ModelProcessors> Processors(const std::string& model);

  // Admission: NOT_FOUND for an unknown model, UNAVAILABLE while draining or when no replica is
  // up, RESOURCE_EXHAUSTED past --max_waiting_requests. The returned ticket counts the request as
  // in flight (and waiting until MarkStarted) until destroyed.
  class Admission {
   public:
    Admission(Admission&& other) noexcept;
    Admission& operator=(Admission&&) = delete;
    ~Admission();
    void MarkStarted();  // the first token arrived: no longer waiting

   private:
    friend class Gateway;
    Admission(Gateway* gateway, std::string model) : gateway_(gateway), model_(std::move(model)) {}
    Gateway* gateway_;
    std::string model_;
    bool waiting_ = true;
  };
  absl::StatusOr<Admission> Admit(const std::string& model);

  // A stub for a worker address (channels are shared and cached).
  std::unique_ptr<flotilla::v1::WorkerService::Stub> WorkerStub(const std::string& address);

  // Drain: new requests get UNAVAILABLE; returns when none is in flight or at the deadline.
  void Drain(absl::Time deadline);
  bool draining() const { return draining_; }

  // Client-side metrics, labelled by model_name.
  void ObserveFirstToken(const std::string& model, double seconds);
  void ObserveInterToken(const std::string& model, double seconds);
  void ObserveRequest(const std::string& model, double e2e_seconds, double queue_seconds, int prompt_tokens,
                      int completion_tokens, const std::string& finish_reason);
  void CountMigration(const std::string& model);
  // Refreshes the router gauges (running / waiting / KV usage per model as the load reports say).
  void RefreshRouterGauges();

 private:
  struct ModelCounters {
    int waiting = 0;
    int in_flight = 0;
  };
  struct Metrics;

  GatewayOptions options_;
  Router router_;
  preprocess::ModelStore store_;
  std::mutex mutex_;
  std::condition_variable idle_;
  std::map<std::string, ModelCounters> counters_;  // guarded by mutex_
  int in_flight_ = 0;                               // guarded by mutex_
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;  // guarded by mutex_
  std::atomic<bool> draining_{false};
  Metrics* metrics_;
};

}  // namespace flotilla::gateway
