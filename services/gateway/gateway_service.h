// flotilla.v1.GatewayService: Generate (server-streaming), Embed, Classify, ListModels — the same
// preparation and generation core as the OpenAI routes, with protobuf at the edge. Deadlines and
// cancellation are honoured: a cancelled call (or one whose deadline passes) aborts its choices
// on their workers.
//
// Thread-safety: gRPC runs handlers concurrently; tensor-free, blocking work runs on a thread per
// call, never on gRPC's callback threads.
#pragma once

#include "flotilla/v1/gateway.grpc.pb.h"
#include "services/gateway/gateway.h"

namespace flotilla::gateway {

class GatewayServiceImpl final : public flotilla::v1::GatewayService::CallbackService {
 public:
  explicit GatewayServiceImpl(Gateway& gateway) : gateway_(gateway) {}

  grpc::ServerWriteReactor<flotilla::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const flotilla::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context, const flotilla::v1::EmbedRequest* request,
                                  flotilla::v1::EmbedResponse* response) override;
  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* context,
                                     const flotilla::v1::ClassifyRequest* request,
                                     flotilla::v1::ClassifyResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const flotilla::v1::ListModelsRequest* request,
                                       flotilla::v1::ListModelsResponse* response) override;

 private:
  Gateway& gateway_;
};

}  // namespace flotilla::gateway
