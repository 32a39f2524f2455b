// The worker service binary: one tensor-parallel replica's rank 0.
#include <memory>

#include "services/common/server.h"
#include "services/worker/worker_service.h"

int main(int argc, char** argv) {
  return flotilla::ServiceMain(argc, argv, "worker",
      [](const flotilla::ServerOptions&) -> absl::StatusOr<flotilla::ServiceBundle> {
        flotilla::ServiceBundle bundle;
        bundle.grpc_services.push_back(std::make_unique<flotilla::WorkerServiceImpl>());
        return bundle;
      });
}
