// The gateway service binary. Continuous batching, streaming and the OpenAI API arrive with the
// serving work that follows issues #5 and #6; until then every RPC answers UNIMPLEMENTED and says so.
#include <memory>

#include "flotilla/v1/gateway.grpc.pb.h"
#include "services/common/rejecting_reactor.h"
#include "services/common/server.h"
#include "services/common/status.h"

namespace flotilla {
namespace {

using namespace flotilla::v1;

constexpr char kWaitsFor[] = "the serving work (gateway scheduler), which follows issues #5 and #6";

class GatewayServiceImpl final : public GatewayService::CallbackService {
  grpc::ServerWriteReactor<GenerateResponse>* Generate(grpc::CallbackServerContext*, const GenerateRequest*) override {
    return Reject<grpc::ServerWriteReactor<GenerateResponse>>(NotYetImplemented("GatewayService.Generate", kWaitsFor));
  }
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* context, const EmbedRequest*, EmbedResponse*) override {
    return RejectUnary(context, NotYetImplemented("GatewayService.Embed", kWaitsFor));
  }
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context, const ListModelsRequest*, ListModelsResponse*) override {
    return RejectUnary(context, NotYetImplemented("GatewayService.ListModels", kWaitsFor));
  }
};

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) {
  return flotilla::ServiceMain(argc, argv, "gateway",
      [](const flotilla::ServerOptions&) -> absl::StatusOr<flotilla::ServiceBundle> {
        flotilla::ServiceBundle bundle;
        bundle.grpc_services.push_back(std::make_unique<flotilla::GatewayServiceImpl>());
        return bundle;
      });
}
