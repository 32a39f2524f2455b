// absl::Status is the currency inside services; grpc::Status only at the RPC edge.
//
//   absl::StatusOr<Repository> repository = store.Get(name);
//   if (!repository.ok()) return reactor->Finish(flotilla::ToGrpcStatus(repository.status()));
#pragma once

#include <string>

#include <absl/status/status.h>
#include <grpcpp/support/status.h>

namespace flotilla {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// The answer of an RPC whose work belongs to a later issue: names the RPC and the issue.
grpc::Status NotYetImplemented(const std::string& rpc, const std::string& waiting_for);

}  // namespace flotilla
