#include "services/common/metrics.h"

#include <chrono>
#include <memory>
#include <sstream>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/text_serializer.h>

namespace flotilla {

prometheus::Registry& MetricsRegistry() {
  static auto* registry = new prometheus::Registry();  // never destroyed: metrics outlive main
  return *registry;
}

std::string RenderMetrics() {
  const prometheus::TextSerializer serializer;
  return serializer.Serialize(MetricsRegistry().Collect());
}

void RegisterProcessMetrics(const std::string& service_name) {
  prometheus::BuildGauge()
      .Name("flotilla_build_info")
      .Help("Always 1; labels name the service and the Flotilla version")
      .Register(MetricsRegistry())
      .Add({{"service", service_name}, {"version", FLOTILLA_VERSION}})
      .Set(1);
  const double start_seconds =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  prometheus::BuildGauge()
      .Name("process_start_time_seconds")
      .Help("Start time of the process since the Unix epoch, in seconds")
      .Register(MetricsRegistry())
      .Add({})
      .Set(start_seconds);
}

}  // namespace flotilla
