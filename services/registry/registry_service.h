// The RegistryService gRPC service (proto/flotilla/v1/registry.proto) over a Registry.
//
//   auto service = MakeRegistryGrpcService(registry, authorizer);
//   bundle.grpc_services.push_back(std::move(service));
//
// Every RPC checks the caller's token (metadata "authorization: Bearer <token>") first. Uploads
// and downloads stream in bounded memory (one 1 MiB chunk in flight per call).
#pragma once

#include <memory>

#include <grpcpp/impl/service_type.h>

#include "services/registry/auth.h"
#include "services/registry/registry.h"

namespace flotilla::registry {

// `registry` and `authorizer` must outlive the service.
std::unique_ptr<grpc::Service> MakeRegistryGrpcService(Registry& registry, const Authorizer& authorizer);

// Refreshes the stored-bytes and dedup-ratio gauges.
void UpdateStorageGauges(Registry& registry);

}  // namespace flotilla::registry
