// Request ids travel with every call as gRPC metadata ("x-request-id") and appear in every log
// line about it, so one request can be followed across the gateway, preprocess and workers.
//
//   grpc::ClientContext context;
//   flotilla::AttachRequestId(&context, flotilla::RequestIdOf(server_context));  // pass it on
//
// The server side is filled by the RPC interceptor (rpc_interceptor.h): a call that arrives
// without an id gets a fresh one, echoed back in the response's initial metadata.
#pragma once

#include <string>

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

namespace flotilla {

inline constexpr char kRequestIdMetadataKey[] = "x-request-id";

// A new random id: 16 lowercase hex digits.
std::string NewRequestId();

// The id of the call a server handler is serving ("" outside an intercepted server).
std::string RequestIdOf(const grpc::ServerContextBase* context);

void AttachRequestId(grpc::ClientContext* context, const std::string& request_id);

// Used by the interceptor: remembers the id of a call for the duration of that call.
void RememberRequestId(const grpc::ServerContextBase* context, std::string request_id);
void ForgetRequestId(const grpc::ServerContextBase* context);

}  // namespace flotilla
