// The preprocess service binary. Tokenizers, chat templates and image processors arrive with
// issue #6; until then every RPC answers UNIMPLEMENTED and says so.
#include <memory>

#include "flotilla/v1/preprocess.grpc.pb.h"
#include "services/common/rejecting_reactor.h"
#include "services/common/server.h"
#include "services/common/status.h"

namespace flotilla {
namespace {

using namespace flotilla::v1;

constexpr char kWaitsFor[] = "issue #6 (preprocess)";

class PreprocessServiceImpl final : public PreprocessService::CallbackService {
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const TokenizeRequest*, TokenizeResponse*) override {
    return RejectUnary(context, NotYetImplemented("PreprocessService.Tokenize", kWaitsFor));
  }
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context, const DetokenizeRequest*, DetokenizeResponse*) override {
    return RejectUnary(context, NotYetImplemented("PreprocessService.Detokenize", kWaitsFor));
  }
  grpc::ServerBidiReactor<DetokenizeStreamRequest, DetokenizeStreamResponse>* DetokenizeStream(grpc::CallbackServerContext*) override {
    return Reject<grpc::ServerBidiReactor<DetokenizeStreamRequest, DetokenizeStreamResponse>>(
        NotYetImplemented("PreprocessService.DetokenizeStream", kWaitsFor));
  }
  grpc::ServerUnaryReactor* ApplyChatTemplate(grpc::CallbackServerContext* context, const ApplyChatTemplateRequest*, ApplyChatTemplateResponse*) override {
    return RejectUnary(context, NotYetImplemented("PreprocessService.ApplyChatTemplate", kWaitsFor));
  }
  grpc::ServerUnaryReactor* ProcessImages(grpc::CallbackServerContext* context, const ProcessImagesRequest*, ProcessImagesResponse*) override {
    return RejectUnary(context, NotYetImplemented("PreprocessService.ProcessImages", kWaitsFor));
  }
};

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) {
  return flotilla::ServiceMain(argc, argv, "preprocess",
      [](const flotilla::ServerOptions&) -> absl::StatusOr<flotilla::ServiceBundle> {
        flotilla::ServiceBundle bundle;
        bundle.grpc_services.push_back(std::make_unique<flotilla::PreprocessServiceImpl>());
        return bundle;
      });
}
