// A server interceptor that every Flotilla service installs (server.h does it): it gives each call
// a request id, counts and times it in Prometheus, and writes one access-log line when it ends.
//
// Metrics: flotilla_grpc_server_started_total{method}, flotilla_grpc_server_handled_total{method,code},
// flotilla_grpc_server_handling_seconds{method} (histogram).
#pragma once

#include <memory>

#include <grpcpp/support/server_interceptor.h>

namespace flotilla {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcInterceptorFactory();

}  // namespace flotilla
