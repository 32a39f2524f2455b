#include "services/common/server.h"

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <absl/flags/flag.h>
#include <absl/flags/parse.h>
#include <absl/flags/usage.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "services/common/logging.h"
#include "services/common/metrics.h"
#include "services/common/rpc_interceptor.h"

ABSL_FLAG(std::string, grpc_listen, "127.0.0.1:0",
          "host:port the gRPC server listens on; port 0 picks a free port (see --ready_file)");
ABSL_FLAG(std::string, http_listen, "127.0.0.1:0",
          "host:port of the HTTP side port (/metrics, /healthz, /readyz, service APIs)");
ABSL_FLAG(std::string, data_dir, "", "directory for the service's state; created if missing");
ABSL_FLAG(std::string, ready_file, "",
          "once serving, write {service,pid,grpc_address,http_address} as JSON to this file");
ABSL_FLAG(std::string, tls_certificate, "", "PEM certificate chain; with --tls_private_key enables TLS");
ABSL_FLAG(std::string, tls_private_key, "", "PEM private key for --tls_certificate");
ABSL_FLAG(double, drain_seconds, 30, "after SIGTERM, how long in-flight calls may finish");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace flotilla {
namespace {

// Largest message a service accepts or sends. Tensors of a forward pass can be large; uploads
// stream in chunks far below this.
constexpr int kMaxMessageBytes = 256 << 20;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(stream), {});
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream stream(temporary, std::ios::binary | std::ios::trunc);
    if (!stream) return absl::PermissionDeniedError(absl::StrCat("cannot write ", temporary));
    stream << contents;
    if (!stream.flush()) return absl::InternalError(absl::StrCat("cannot write ", temporary));
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) return absl::InternalError(absl::StrCat("cannot rename ", temporary, ": ", error.message()));
  return absl::OkStatus();
}

// httplib's default also sets SO_REUSEPORT, which lets a second process bind a port that is in
// use; we want "address in use" instead.
void ExclusiveSocketOptions(int socket) {
  int yes = 1;
  setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
}

std::string FormatAddress(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                              : absl::StrCat(host, ":", port);
}

int Fail(const std::string& service_name, const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", service_name.c_str(), message.c_str());
  return 1;
}

}  // namespace

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address) {
  std::string host;
  std::string port_text;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("bad address '", address, "': expected [host]:port"));
    }
    host = address.substr(1, close - 1);
    port_text = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad address '", address, "': expected host:port"));
    }
    host = address.substr(0, colon);
    port_text = address.substr(colon + 1);
  }
  int port = 0;
  if (host.empty() || !absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad address '", address, "': expected host:port with a port from 0 to 65535"));
  }
  return std::make_pair(host, port);
}

absl::Status PrepareDataDirectory(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::exists(path, error)) {
    if (!fs::is_directory(path, error)) {
      return absl::FailedPreconditionError(absl::StrCat("data directory ", path, " is not a directory"));
    }
  } else if (!fs::create_directories(path, error)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create data directory ", path, ": ", error.message()));
  }
  // Probe by writing: access(2) says yes to root even on a read-only mount.
  const fs::path probe = fs::path(path) / ".flotilla-write-probe";
  {
    std::ofstream stream(probe);
    if (!stream || !(stream << "ok") || !stream.flush()) {
      return absl::FailedPreconditionError(absl::StrCat("data directory ", path, " is not writable"));
    }
  }
  fs::remove(probe, error);
  return absl::OkStatus();
}

int ServiceMain(int argc, char** argv, const std::string& service_name, const ServiceFactory& factory) {
  // Block the stop signals before any thread exists, so every thread inherits the mask and only
  // the sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::SetProgramUsageMessage(absl::StrCat("The Flotilla ", service_name, " service."));
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    return Fail(service_name, absl::StrCat("unexpected argument '", positional[1], "' (flags only; see --help)"));
  }
  SetLogServiceName(service_name);
  LogLevel level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    return Fail(service_name, "--log_level must be debug, info, warning or error");
  }
  SetMinimumLogLevel(level);

  ServerOptions options;
  options.service_name = service_name;
  options.grpc_listen = absl::GetFlag(FLAGS_grpc_listen);
  options.http_listen = absl::GetFlag(FLAGS_http_listen);
  options.data_directory = absl::GetFlag(FLAGS_data_dir);
  options.ready_file = absl::GetFlag(FLAGS_ready_file);
  options.tls_certificate = absl::GetFlag(FLAGS_tls_certificate);
  options.tls_private_key = absl::GetFlag(FLAGS_tls_private_key);
  options.drain_deadline = absl::Seconds(absl::GetFlag(FLAGS_drain_seconds));

  auto grpc_address = SplitHostPort(options.grpc_listen);
  if (!grpc_address.ok()) return Fail(service_name, absl::StrCat("--grpc_listen: ", grpc_address.status().message()));
  auto http_address = SplitHostPort(options.http_listen);
  if (!http_address.ok()) return Fail(service_name, absl::StrCat("--http_listen: ", http_address.status().message()));
  if (options.tls_certificate.empty() != options.tls_private_key.empty()) {
    return Fail(service_name, "--tls_certificate and --tls_private_key go together");
  }
  if (!options.data_directory.empty()) {
    if (absl::Status status = PrepareDataDirectory(options.data_directory); !status.ok()) {
      return Fail(service_name, std::string(status.message()));
    }
  }

  RegisterProcessMetrics(service_name);
  absl::StatusOr<ServiceBundle> bundle = factory(options);
  if (!bundle.ok()) return Fail(service_name, std::string(bundle.status().message()));

  // --- gRPC ---
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_certificate.empty()) {
    auto certificate = ReadFile(options.tls_certificate);
    auto private_key = ReadFile(options.tls_private_key);
    if (!certificate.ok()) return Fail(service_name, std::string(certificate.status().message()));
    if (!private_key.ok()) return Fail(service_name, std::string(private_key.status().message()));
    grpc::SslServerCredentialsOptions ssl_options;
    ssl_options.pem_key_cert_pairs.push_back({*private_key, *certificate});
    credentials = grpc::SslServerCredentials(ssl_options);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: two servers could then share a port silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  int grpc_port = 0;
  builder.AddListeningPort(options.grpc_listen, credentials, &grpc_port);
  for (auto& service : bundle->grpc_services) builder.RegisterService(service.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(MakeRpcInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (!grpc_server || grpc_port == 0) {
    return Fail(service_name, absl::StrCat("cannot listen for gRPC on ", options.grpc_listen,
                                           ": the address is in use or not available"));
  }

  // --- HTTP side port ---
  std::unique_ptr<httplib::Server> http_server;
  if (!options.tls_certificate.empty()) {
    http_server = std::make_unique<httplib::SSLServer>(options.tls_certificate.c_str(),
                                                       options.tls_private_key.c_str());
  } else {
    http_server = std::make_unique<httplib::Server>();
  }
  std::atomic<bool> ready{false};
  http_server->set_socket_options(ExclusiveSocketOptions);
  http_server->Get("/metrics", [](const httplib::Request&, httplib::Response& response) {
    response.set_content(RenderMetrics(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http_server->Get("/healthz", [](const httplib::Request&, httplib::Response& response) {
    response.set_content("ok\n", "text/plain");
  });
  http_server->Get("/readyz", [&ready](const httplib::Request&, httplib::Response& response) {
    response.status = ready ? 200 : 503;
    response.set_content(ready ? "ready\n" : "draining\n", "text/plain");
  });
  if (bundle->add_http_routes) bundle->add_http_routes(*http_server);
  const auto& [http_host, requested_http_port] = *http_address;
  int http_port = requested_http_port;
  if (requested_http_port == 0) {
    http_port = http_server->bind_to_any_port(http_host);
  } else if (!http_server->bind_to_port(http_host, requested_http_port)) {
    http_port = -1;
  }
  if (http_port <= 0) {
    grpc_server->Shutdown();
    return Fail(service_name, absl::StrCat("cannot listen for HTTP on ", options.http_listen,
                                           ": the address is in use or not available"));
  }
  std::thread http_thread([&http_server] { http_server->listen_after_bind(); });

  const std::string grpc_endpoint = FormatAddress(grpc_address->first, grpc_port);
  const std::string http_endpoint = FormatAddress(http_host, http_port);
  grpc_server->GetHealthCheckService()->SetServingStatus(true);
  ready = true;
  if (!options.ready_file.empty()) {
    const nlohmann::json ready_document = {{"service", service_name},
                                           {"pid", static_cast<int>(getpid())},
                                           {"grpc_address", grpc_endpoint},
                                           {"http_address", http_endpoint}};
    if (absl::Status status = WriteFileAtomically(options.ready_file, ready_document.dump());
        !status.ok()) {
      grpc_server->Shutdown();
      http_server->stop();
      http_thread.join();
      return Fail(service_name, std::string(status.message()));
    }
  }
  LogInfo("serving", {{"grpc_address", grpc_endpoint}, {"http_address", http_endpoint},
                      {"tls", !options.tls_certificate.empty()}});
  if (bundle->on_serving) bundle->on_serving(grpc_endpoint, http_endpoint);

  int received_signal = 0;
  sigwait(&stop_signals, &received_signal);

  // Drain: tell load balancers first (health, /readyz), then let in-flight calls finish. New
  // calls are refused with UNAVAILABLE once Shutdown has closed the listener.
  LogInfo("draining", {{"signal", strsignal(received_signal)},
                       {"deadline_seconds", absl::ToDoubleSeconds(options.drain_deadline)}});
  ready = false;
  grpc_server->GetHealthCheckService()->SetServingStatus(false);
  const absl::Time drain_deadline = absl::Now() + options.drain_deadline;
  if (bundle->on_drain) bundle->on_drain(drain_deadline);
  grpc_server->Shutdown(absl::ToChronoTime(drain_deadline));
  grpc_server->Wait();
  http_server->stop();
  http_thread.join();
  if (!options.ready_file.empty()) {
    std::error_code ignored;
    std::filesystem::remove(options.ready_file, ignored);
  }
  LogInfo("stopped");
  return 0;
}

}  // namespace flotilla
