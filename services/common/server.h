// The bootstrap every Flotilla service binary shares: flags, the gRPC server (health checking,
// reflection, the RPC interceptor, optional TLS), the HTTP side port (/metrics, /healthz, /readyz
// and any routes the service adds), a ready file, and graceful drain on SIGTERM.
//
//   int main(int argc, char** argv) {
//     return flotilla::ServiceMain(argc, argv, "registry",
//         [](const flotilla::ServerOptions& options) -> absl::StatusOr<flotilla::ServiceBundle> {
//           flotilla::ServiceBundle bundle;
//           bundle.grpc_services.push_back(std::make_unique<RegistryServiceImpl>(...));
//           return bundle;
//         });
//   }
//
// Flags (every service): --grpc_listen, --http_listen (host:port; port 0 picks a free one),
// --data_dir, --ready_file, --tls_certificate, --tls_private_key, --drain_seconds, --log_level.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/time/time.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/service_type.h>

namespace httplib {
class Server;
}

namespace flotilla {

struct ServerOptions {
  std::string service_name;
  std::string grpc_listen = "127.0.0.1:0";
  std::string http_listen = "127.0.0.1:0";
  // Where the service keeps state; created if missing. Empty: the service keeps none.
  std::string data_directory;
  // Written (atomically) once the service is SERVING: {"service","pid","grpc_address","http_address"}.
  std::string ready_file;
  // PEM files; both or neither. With them, gRPC and the HTTP port speak TLS.
  std::string tls_certificate;
  std::string tls_private_key;
  // How long in-flight calls may run on after SIGTERM before they are cancelled.
  absl::Duration drain_deadline = absl::Seconds(30);
};

// What a service contributes to the bootstrap.
struct ServiceBundle {
  std::vector<std::unique_ptr<grpc::Service>> grpc_services;
  // Adds service-specific routes (the Hub API, the OpenAI API) to the HTTP side port.
  std::function<void(httplib::Server&)> add_http_routes;
  // Called once both ports listen, with the addresses they bound (a worker registers itself with
  // its gateways from here).
  std::function<void(const std::string& grpc_address, const std::string& http_address)> on_serving;
  // Called on SIGTERM after health turns NOT_SERVING and before the gRPC server shuts down: stop
  // admitting work and return once the work in flight is done or the deadline has passed.
  std::function<void(absl::Time deadline)> on_drain;
  // Keeps state the services point into alive until they are destroyed.
  std::shared_ptr<void> state;
};

using ServiceFactory = std::function<absl::StatusOr<ServiceBundle>(const ServerOptions&)>;

// Runs a service until SIGTERM or SIGINT, then drains. Returns the process exit code: 0 after a
// clean drain, 1 with one error line on stderr when it cannot start (bad flag, port in use,
// unusable data directory).
int ServiceMain(int argc, char** argv, const std::string& service_name, const ServiceFactory& factory);

// Splits "host:port" (or "[v6]:port"); the error names the flag's value.
absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address);

// Creates `path` if missing; fails with a clear message when it is not a usable directory.
absl::Status PrepareDataDirectory(const std::string& path);

}  // namespace flotilla
