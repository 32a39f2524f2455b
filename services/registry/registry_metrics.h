// The registry's own Prometheus metrics (gRPC call counts and latencies come from the common RPC
// interceptor): bytes in and out, pushes, pulls, errors by code, stored bytes, dedup ratio, HTTP
// latency. Thread-safe (prometheus-cpp metrics are).
#pragma once

#include <string>

#include <absl/status/status.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

namespace flotilla::registry {

struct RegistryMetrics {
  // api: "grpc" or "hub" (the Hugging Face HTTP API).
  prometheus::Family<prometheus::Counter>& bytes_received;  // flotilla_registry_bytes_received_total{api}
  prometheus::Family<prometheus::Counter>& bytes_sent;      // flotilla_registry_bytes_sent_total{api}
  prometheus::Family<prometheus::Counter>& pushes;          // flotilla_registry_pushes_total{api}: commits created
  prometheus::Family<prometheus::Counter>& pulls;           // flotilla_registry_pulls_total{api}: files downloaded
  prometheus::Family<prometheus::Counter>& errors;          // flotilla_registry_errors_total{api,code}
  prometheus::Gauge& stored_bytes;                          // flotilla_registry_stored_bytes
  prometheus::Gauge& dedup_ratio;                           // flotilla_registry_dedup_ratio
  prometheus::Family<prometheus::Histogram>& http_seconds;  // flotilla_registry_http_request_seconds{route}

  void CountError(const std::string& api, const absl::Status& status);
};

RegistryMetrics& Metrics();

}  // namespace flotilla::registry
