// The registry service binary. Its storage and Hub API arrive with issue #4; until then every RPC
// answers UNIMPLEMENTED and says so.
#include <memory>

#include "flotilla/v1/registry.grpc.pb.h"
#include "services/common/rejecting_reactor.h"
#include "services/common/server.h"
#include "services/common/status.h"

namespace flotilla {
namespace {

using namespace flotilla::v1;

constexpr char kWaitsFor[] = "issue #4 (registry)";

class RegistryServiceImpl final : public RegistryService::CallbackService {
  grpc::ServerUnaryReactor* CreateRepository(grpc::CallbackServerContext* context, const CreateRepositoryRequest*, Repository*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.CreateRepository", kWaitsFor));
  }
  grpc::ServerUnaryReactor* GetRepository(grpc::CallbackServerContext* context, const GetRepositoryRequest*, Repository*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.GetRepository", kWaitsFor));
  }
  grpc::ServerUnaryReactor* ListRepositories(grpc::CallbackServerContext* context, const ListRepositoriesRequest*, ListRepositoriesResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.ListRepositories", kWaitsFor));
  }
  grpc::ServerUnaryReactor* DeleteRepository(grpc::CallbackServerContext* context, const DeleteRepositoryRequest*, DeleteRepositoryResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.DeleteRepository", kWaitsFor));
  }
  grpc::ServerUnaryReactor* ResolveRevision(grpc::CallbackServerContext* context, const ResolveRevisionRequest*, ResolveRevisionResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.ResolveRevision", kWaitsFor));
  }
  grpc::ServerUnaryReactor* ListFiles(grpc::CallbackServerContext* context, const ListFilesRequest*, ListFilesResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.ListFiles", kWaitsFor));
  }
  grpc::ServerUnaryReactor* ListCommits(grpc::CallbackServerContext* context, const ListCommitsRequest*, ListCommitsResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.ListCommits", kWaitsFor));
  }
  grpc::ServerUnaryReactor* ListRefs(grpc::CallbackServerContext* context, const ListRefsRequest*, ListRefsResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.ListRefs", kWaitsFor));
  }
  grpc::ServerUnaryReactor* CreateTag(grpc::CallbackServerContext* context, const CreateTagRequest*, Ref*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.CreateTag", kWaitsFor));
  }
  grpc::ServerUnaryReactor* DeleteTag(grpc::CallbackServerContext* context, const DeleteTagRequest*, DeleteTagResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.DeleteTag", kWaitsFor));
  }
  grpc::ServerUnaryReactor* FindMissingBlobs(grpc::CallbackServerContext* context, const FindMissingBlobsRequest*, FindMissingBlobsResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.FindMissingBlobs", kWaitsFor));
  }
  grpc::ServerReadReactor<UploadBlobRequest>* UploadBlob(grpc::CallbackServerContext*, UploadBlobResponse*) override {
    return Reject<grpc::ServerReadReactor<UploadBlobRequest>>(NotYetImplemented("RegistryService.UploadBlob", kWaitsFor));
  }
  grpc::ServerUnaryReactor* CreateCommit(grpc::CallbackServerContext* context, const CreateCommitRequest*, Commit*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.CreateCommit", kWaitsFor));
  }
  grpc::ServerWriteReactor<DownloadFileResponse>* DownloadFile(grpc::CallbackServerContext*, const DownloadFileRequest*) override {
    return Reject<grpc::ServerWriteReactor<DownloadFileResponse>>(NotYetImplemented("RegistryService.DownloadFile", kWaitsFor));
  }
  grpc::ServerUnaryReactor* FindKernelVariant(grpc::CallbackServerContext* context, const FindKernelVariantRequest*, FindKernelVariantResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.FindKernelVariant", kWaitsFor));
  }
  grpc::ServerUnaryReactor* CollectGarbage(grpc::CallbackServerContext* context, const CollectGarbageRequest*, CollectGarbageResponse*) override {
    return RejectUnary(context, NotYetImplemented("RegistryService.CollectGarbage", kWaitsFor));
  }
};

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) {
  return flotilla::ServiceMain(argc, argv, "registry",
      [](const flotilla::ServerOptions&) -> absl::StatusOr<flotilla::ServiceBundle> {
        flotilla::ServiceBundle bundle;
        bundle.grpc_services.push_back(std::make_unique<flotilla::RegistryServiceImpl>());
        return bundle;
      });
}
