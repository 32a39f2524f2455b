#include "services/registry/registry_metrics.h"

#include <prometheus/registry.h>

#include "services/common/metrics.h"

namespace flotilla::registry {

RegistryMetrics& Metrics() {
  static RegistryMetrics* metrics = [] {
    prometheus::Registry& registry = MetricsRegistry();
    return new RegistryMetrics{
        prometheus::BuildCounter().Name("flotilla_registry_bytes_received_total")
            .Help("Blob bytes received by uploads").Register(registry),
        prometheus::BuildCounter().Name("flotilla_registry_bytes_sent_total")
            .Help("File bytes sent by downloads").Register(registry),
        prometheus::BuildCounter().Name("flotilla_registry_pushes_total")
            .Help("Commits created by pushes").Register(registry),
        prometheus::BuildCounter().Name("flotilla_registry_pulls_total")
            .Help("File downloads started").Register(registry),
        prometheus::BuildCounter().Name("flotilla_registry_errors_total")
            .Help("Requests that failed, by API and status code").Register(registry),
        prometheus::BuildGauge().Name("flotilla_registry_stored_bytes")
            .Help("Bytes of blobs stored (after deduplication)").Register(registry).Add({}),
        prometheus::BuildGauge().Name("flotilla_registry_dedup_ratio")
            .Help("Bytes of all commits' trees over stored bytes").Register(registry).Add({}),
        prometheus::BuildHistogram().Name("flotilla_registry_http_request_seconds")
            .Help("Hub HTTP API request latency by route").Register(registry),
    };
  }();
  return *metrics;
}

void RegistryMetrics::CountError(const std::string& api, const absl::Status& status) {
  errors.Add({{"api", api}, {"code", absl::StatusCodeToString(status.code())}}).Increment();
}

}  // namespace flotilla::registry
