#include "services/gateway/gateway.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "services/common/metrics.h"

namespace flotilla::gateway {

// vLLM's client-side metric names with flotilla_ in place of vllm:, and vLLM's default buckets
// (vllm/v1/metrics/buckets.py), so vLLM's dashboards translate one to one.
struct Gateway::Metrics {
  prometheus::Family<prometheus::Histogram>& time_to_first_token;
  prometheus::Family<prometheus::Histogram>& inter_token_latency;
  prometheus::Family<prometheus::Histogram>& e2e_request_latency;
  prometheus::Family<prometheus::Histogram>& request_queue_time;
  prometheus::Family<prometheus::Counter>& prompt_tokens;
  prometheus::Family<prometheus::Counter>& generation_tokens;
  prometheus::Family<prometheus::Counter>& request_success;
  prometheus::Family<prometheus::Counter>& migrations;
  prometheus::Family<prometheus::Gauge>& router_running;
  prometheus::Family<prometheus::Gauge>& router_waiting;
  prometheus::Family<prometheus::Gauge>& router_kv_usage;
  prometheus::Family<prometheus::Gauge>& router_replicas;
};

namespace {

const prometheus::Histogram::BucketBoundaries kTimeToFirstTokenBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
    640.0, 2560.0};
const prometheus::Histogram::BucketBoundaries kInterTokenBuckets = {
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
const prometheus::Histogram::BucketBoundaries kRequestLatencyBuckets = {
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0};

}  // namespace

Gateway::Gateway(GatewayOptions options)
    : options_(std::move(options)),
      store_(preprocess::ModelStoreOptions{.registry_address = options_.registry_address,
                                           .cache_directory = options_.cache_directory,
                                           .allow_local_paths = true}) {
  prometheus::Registry& registry = MetricsRegistry();
  metrics_ = new Metrics{
      prometheus::BuildHistogram().Name("flotilla_time_to_first_token_seconds")
          .Help("From the request's arrival at the gateway to its first token").Register(registry),
      prometheus::BuildHistogram().Name("flotilla_inter_token_latency_seconds")
          .Help("Between two successive token deliveries of a request").Register(registry),
      prometheus::BuildHistogram().Name("flotilla_e2e_request_latency_seconds")
          .Help("From arrival to the last token").Register(registry),
      prometheus::BuildHistogram().Name("flotilla_request_queue_time_seconds")
          .Help("From arrival until the request was handed to a worker replica").Register(registry),
      prometheus::BuildCounter().Name("flotilla_request_prompt_tokens_total")
          .Help("Prompt tokens of finished requests, as the gateway counted them").Register(registry),
      prometheus::BuildCounter().Name("flotilla_request_generation_tokens_total")
          .Help("Tokens generated for finished requests, as the gateway received them").Register(registry),
      prometheus::BuildCounter().Name("flotilla_request_success_total")
          .Help("Finished requests by finish reason (stop, length, abort, error)").Register(registry),
      prometheus::BuildCounter().Name("flotilla_worker_failovers_total")
          .Help("Choices moved to another replica because their worker's stream broke").Register(registry),
      prometheus::BuildGauge().Name("flotilla_router_num_requests_running")
          .Help("Requests running on the model's replicas, from their load reports").Register(registry),
      prometheus::BuildGauge().Name("flotilla_router_num_requests_waiting")
          .Help("Requests waiting on the model's replicas, from their load reports").Register(registry),
      prometheus::BuildGauge().Name("flotilla_router_kv_cache_usage_perc")
          .Help("KV-cache usage of the model's replicas together, from their load reports").Register(registry),
      prometheus::BuildGauge().Name("flotilla_router_replicas")
          .Help("Live replicas of the model registered with this gateway").Register(registry),
  };
}

absl::StatusOr<Gateway::ModelProcessors> Gateway::Processors(const std::string& model) {
  absl::StatusOr<flotilla::v1::WorkerInfo> info = router_.Info(model);
  if (!info.ok()) return info.status();
  flotilla::v1::ModelReference reference = info->model();
  // Pin the commit the workers loaded, so the tokenizer matches the weights even if a branch moved.
  if (reference.local_path().empty() && !info->commit_id().empty()) reference.set_revision(info->commit_id());
  absl::StatusOr<preprocess::ModelHandle> handle = store_.Get(reference);
  if (!handle.ok()) return handle.status();
  return ModelProcessors{*std::move(info), *std::move(handle)};
}

Gateway::Admission::Admission(Admission&& other) noexcept
    : gateway_(other.gateway_), model_(std::move(other.model_)), waiting_(other.waiting_) {
  other.gateway_ = nullptr;
}

Gateway::Admission::~Admission() {
  if (gateway_ == nullptr) return;
  std::lock_guard<std::mutex> lock(gateway_->mutex_);
  ModelCounters& counters = gateway_->counters_[model_];
  if (waiting_) --counters.waiting;
  --counters.in_flight;
  if (--gateway_->in_flight_ == 0) gateway_->idle_.notify_all();
}

void Gateway::Admission::MarkStarted() {
  if (gateway_ == nullptr || !waiting_) return;
  std::lock_guard<std::mutex> lock(gateway_->mutex_);
  --gateway_->counters_[model_].waiting;
  waiting_ = false;
}

absl::StatusOr<Gateway::Admission> Gateway::Admit(const std::string& model) {
  if (draining_) return absl::UnavailableError("the gateway is shutting down and admits no new request; retry on another");
  std::vector<Router::ModelSummary> models = router_.Models();
  const Router::ModelSummary* summary = nullptr;
  for (const Router::ModelSummary& candidate : models) {
    if (candidate.name == model) summary = &candidate;
  }
  if (summary == nullptr) {
    absl::Status unknown = router_.Info(model).status();  // NOT_FOUND, or UNAVAILABLE once served
    return unknown.ok() ? absl::UnavailableError(absl::StrCat("no replica of ", model, " is up")) : unknown;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  ModelCounters& counters = counters_[model];
  // The replicas' queues include this gateway's own waiting requests; take the larger view.
  const int waiting = std::max(counters.waiting, summary->num_requests_waiting);
  if (waiting >= options_.max_waiting_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(model, " has ", waiting, " requests waiting, the limit (",
                                                     options_.max_waiting_requests,
                                                     ", --max_waiting_requests); retry after a moment"));
  }
  ++counters.waiting;
  ++counters.in_flight;
  ++in_flight_;
  return Admission(this, model);
}

std::unique_ptr<flotilla::v1::WorkerService::Stub> Gateway::WorkerStub(const std::string& address) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::shared_ptr<grpc::Channel>& channel = channels_[address];
  if (channel == nullptr) {
    grpc::ChannelArguments arguments;
    // A worker that restarts on the same address must be reachable at once, not after backoff.
    arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), arguments);
  }
  return flotilla::v1::WorkerService::NewStub(channel);
}

void Gateway::Drain(absl::Time deadline) {
  draining_ = true;
  std::unique_lock<std::mutex> lock(mutex_);
  idle_.wait_until(lock, absl::ToChronoTime(deadline), [this] { return in_flight_ == 0; });
}

void Gateway::ObserveFirstToken(const std::string& model, double seconds) {
  metrics_->time_to_first_token.Add({{"model_name", model}}, kTimeToFirstTokenBuckets).Observe(seconds);
}

void Gateway::ObserveInterToken(const std::string& model, double seconds) {
  metrics_->inter_token_latency.Add({{"model_name", model}}, kInterTokenBuckets).Observe(seconds);
}

void Gateway::ObserveRequest(const std::string& model, double e2e_seconds, double queue_seconds, int prompt_tokens,
                             int completion_tokens, const std::string& finish_reason) {
  const prometheus::Labels labels = {{"model_name", model}};
  metrics_->e2e_request_latency.Add(labels, kRequestLatencyBuckets).Observe(e2e_seconds);
  metrics_->request_queue_time.Add(labels, kRequestLatencyBuckets).Observe(queue_seconds);
  metrics_->prompt_tokens.Add(labels).Increment(prompt_tokens);
  metrics_->generation_tokens.Add(labels).Increment(completion_tokens);
  metrics_->request_success.Add({{"model_name", model}, {"finished_reason", finish_reason}}).Increment();
}

void Gateway::CountMigration(const std::string& model) { metrics_->migrations.Add({{"model_name", model}}).Increment(); }

void Gateway::RefreshRouterGauges() {
  for (const Router::ModelSummary& summary : router_.Models()) {
    const prometheus::Labels labels = {{"model_name", summary.name}};
    metrics_->router_running.Add(labels).Set(summary.num_requests_running);
    metrics_->router_waiting.Add(labels).Set(summary.num_requests_waiting);
    metrics_->router_kv_usage.Add(labels).Set(
        summary.kv_blocks_total > 0 ? static_cast<double>(summary.kv_blocks_used) / summary.kv_blocks_total : 0.0);
    metrics_->router_replicas.Add(labels).Set(summary.replicas);
  }
}

}  // namespace flotilla::gateway
