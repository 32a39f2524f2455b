// The gateway service binary: flotilla.v1.GatewayService and WorkerRegistry on the gRPC port, the
// OpenAI-compatible API on the HTTP port (beside /metrics, /healthz, /readyz). Workers register
// themselves; the gateway holds no state beyond the requests it is serving, so any number of
// gateway replicas can run behind one Service.
#include <filesystem>
#include <memory>

#include <absl/flags/flag.h>
#include <httplib.h>

#include "services/common/server.h"
#include "services/gateway/gateway.h"
#include "services/gateway/gateway_service.h"
#include "services/gateway/openai_routes.h"
#include "services/gateway/worker_registry.h"

ABSL_FLAG(std::string, registry, "", "registry gRPC address, to pull served models' tokenizers (default $FLOTILLA_REGISTRY)");
ABSL_FLAG(int32_t, max_waiting_requests, 256,
          "requests of one model that may wait for their first token before new ones get 429 / RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, max_migrations, 3, "how often one request may move to another replica when its worker dies");

int main(int argc, char** argv) {
  return flotilla::ServiceMain(argc, argv, "gateway",
      [](const flotilla::ServerOptions& options) -> absl::StatusOr<flotilla::ServiceBundle> {
        std::string registry = absl::GetFlag(FLAGS_registry);
        if (registry.empty()) {
          if (const char* from_environment = std::getenv("FLOTILLA_REGISTRY")) registry = from_environment;
        }
        const std::string cache = options.data_directory.empty()
                                      ? (std::filesystem::temp_directory_path() / "flotilla-gateway-cache").string()
                                      : (std::filesystem::path(options.data_directory) / "cache").string();
        auto gateway = std::make_shared<flotilla::gateway::Gateway>(flotilla::gateway::GatewayOptions{
            .registry_address = registry,
            .cache_directory = cache,
            .max_waiting_requests = absl::GetFlag(FLAGS_max_waiting_requests),
            .max_migrations = absl::GetFlag(FLAGS_max_migrations)});
        flotilla::ServiceBundle bundle;
        bundle.grpc_services.push_back(std::make_unique<flotilla::gateway::GatewayServiceImpl>(*gateway));
        auto registry_service = std::make_unique<flotilla::gateway::WorkerRegistryImpl>(*gateway);
        flotilla::gateway::WorkerRegistryImpl* worker_registry = registry_service.get();
        bundle.grpc_services.push_back(std::move(registry_service));
        bundle.add_http_routes = [gateway](httplib::Server& server) { flotilla::gateway::AddOpenAiRoutes(server, *gateway); };
        bundle.on_drain = [gateway, worker_registry](absl::Time deadline) {
          gateway->Drain(deadline);
          // The requests are done: the workers' registration streams need not hold the shutdown.
          worker_registry->CloseAll();
        };
        bundle.state = gateway;
        return bundle;
      });
}
