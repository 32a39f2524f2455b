// The process's Prometheus metrics: one registry, served as text on the HTTP side port's /metrics.
//
//   auto& pushes = prometheus::BuildCounter().Name("flotilla_registry_pushes_total")
//                      .Help("Commits created by pushes").Register(flotilla::MetricsRegistry());
//   pushes.Add({}).Increment();
//
// prometheus-cpp's metric objects are thread-safe; so is RenderMetrics.
#pragma once

#include <string>

#include <prometheus/registry.h>

namespace flotilla {

prometheus::Registry& MetricsRegistry();

// The text exposition format (version 0.0.4) of every metric in MetricsRegistry().
std::string RenderMetrics();

// Records flotilla_build_info{service,version} and process_start_time_seconds. Called by the
// server bootstrap.
void RegisterProcessMetrics(const std::string& service_name);

}  // namespace flotilla
