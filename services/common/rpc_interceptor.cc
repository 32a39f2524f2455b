#include "services/common/rpc_interceptor.h"

#include <chrono>
#include <string>

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include "services/common/logging.h"
#include "services/common/metrics.h"
#include "services/common/request_id.h"

namespace flotilla {
namespace {

struct RpcMetrics {
  prometheus::Family<prometheus::Counter>& started;
  prometheus::Family<prometheus::Counter>& handled;
  prometheus::Family<prometheus::Histogram>& handling_seconds;

  static RpcMetrics& Get() {
    static RpcMetrics* metrics = new RpcMetrics{
        prometheus::BuildCounter()
            .Name("flotilla_grpc_server_started_total")
            .Help("RPCs started on the server, by method")
            .Register(MetricsRegistry()),
        prometheus::BuildCounter()
            .Name("flotilla_grpc_server_handled_total")
            .Help("RPCs completed on the server, by method and status code")
            .Register(MetricsRegistry()),
        prometheus::BuildHistogram()
            .Name("flotilla_grpc_server_handling_seconds")
            .Help("Time from a call's arrival to its status, by method")
            .Register(MetricsRegistry()),
    };
    return *metrics;
  }
};

const char* StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

class RpcInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit RpcInterceptor(grpc::experimental::ServerRpcInfo* info)
      : info_(info), method_(info->method() ? info->method() : ""),
        start_(std::chrono::steady_clock::now()) {
    RpcMetrics::Get().started.Add({{"method", method_}}).Increment();
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      std::string request_id;
      if (auto* metadata = methods->GetRecvInitialMetadata()) {
        auto found = metadata->find(kRequestIdMetadataKey);
        if (found != metadata->end()) request_id.assign(found->second.data(), found->second.size());
      }
      if (request_id.empty() || request_id.size() > 128) request_id = NewRequestId();
      request_id_ = request_id;
      RememberRequestId(info_->server_context(), request_id);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      if (auto* metadata = methods->GetSendInitialMetadata(); metadata && !request_id_.empty()) {
        metadata->emplace(kRequestIdMetadataKey, request_id_);
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      const char* code = StatusCodeName(status.error_code());
      RpcMetrics& metrics = RpcMetrics::Get();
      metrics.handled.Add({{"method", method_}, {"code", code}}).Increment();
      metrics.handling_seconds
          .Add({{"method", method_}},
               prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60})
          .Observe(seconds);
      // Health probes arrive every few seconds; keep them out of the info-level access log.
      const bool is_probe = method_.rfind("/grpc.health.v1.Health/", 0) == 0;
      nlohmann::json fields = {{"request_id", request_id_}, {"method", method_}, {"code", code},
                               {"seconds", seconds}};
      if (!status.ok()) fields["error"] = status.error_message();
      Log(is_probe ? LogLevel::kDebug : LogLevel::kInfo, "rpc finished", fields);
      ForgetRequestId(info_->server_context());
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  std::string method_;
  std::string request_id_;
  std::chrono::steady_clock::time_point start_;
};

class RpcInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcInterceptor(info);  // owned and deleted by gRPC
  }
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcInterceptorFactory() {
  return std::make_unique<RpcInterceptorFactory>();
}

}  // namespace flotilla
