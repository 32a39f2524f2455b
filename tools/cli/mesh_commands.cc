// flotilla up / down / status: the local mesh as processes on 127.0.0.1.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include <absl/strings/str_cat.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "grpc/health/v1/health.grpc.pb.h"
#include "services/common/server.h"
#include "tools/cli/commands.h"
#include "tools/cli/mesh.h"

namespace flotilla::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path RunDirectory(const std::string& data_directory) { return fs::path(data_directory) / "run"; }
fs::path MeshFile(const std::string& data_directory) { return RunDirectory(data_directory) / "mesh.json"; }

// A pid names one of our services only while /proc says it runs a flotilla binary: pids are reused.
bool IsOurProcess(int pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  std::ifstream cmdline(absl::StrCat("/proc/", pid, "/cmdline"));
  std::string program;
  std::getline(cmdline, program, '\0');
  return fs::path(program).filename().string().rfind("flotilla-", 0) == 0;
}

fs::path ExecutableDirectory() {
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  return error ? fs::current_path() : self.parent_path();
}

std::string LastLine(const fs::path& path) {
  std::ifstream stream(path);
  std::string line, last;
  while (std::getline(stream, line)) {
    if (!line.empty()) last = line;
  }
  return last;
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const fs::path& path) {
  std::ifstream stream(path);
  if (!stream) return absl::NotFoundError(absl::StrCat("no file ", path.string()));
  nlohmann::json document = nlohmann::json::parse(stream, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) return absl::DataLossError(absl::StrCat(path.string(), " is not valid JSON"));
  return document;
}

// Starts one service detached from the CLI (its own session), logging to a file.
int Spawn(const fs::path& binary, const std::vector<std::string>& arguments, const fs::path& log_path) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  setsid();
  const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  const int null = open("/dev/null", O_RDONLY);
  if (log >= 0) {
    dup2(log, STDOUT_FILENO);
    dup2(log, STDERR_FILENO);
  }
  if (null >= 0) dup2(null, STDIN_FILENO);
  std::vector<char*> argv;
  std::string program = binary.string();
  argv.push_back(program.data());
  std::vector<std::string> copies = arguments;
  for (std::string& argument : copies) argv.push_back(argument.data());
  argv.push_back(nullptr);
  execv(program.c_str(), argv.data());
  std::fprintf(stderr, "cannot execute %s: %s\n", program.c_str(), strerror(errno));
  _exit(127);
}

void StopProcesses(const std::vector<int>& pids, std::chrono::seconds timeout) {
  for (int pid : pids) {
    if (pid > 0) kill(pid, SIGTERM);
  }
  const auto deadline = Clock::now() + timeout;
  for (int pid : pids) {
    while (pid > 0 && kill(pid, 0) == 0 && Clock::now() < deadline) {
      waitpid(pid, nullptr, WNOHANG);  // reaps it when it is our child (the failed-`up` path)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (pid > 0 && kill(pid, 0) == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
}

void PrintTable(const MeshState& mesh, bool with_health) {
  std::printf("%-11s %-8s %-22s %-22s %s\n", "SERVICE", "PID", "GRPC", "HTTP", with_health ? "HEALTH" : "");
  for (const MeshService& service : mesh.services) {
    std::printf("%-11s %-8d %-22s %-22s %s\n", service.name.c_str(), service.pid, service.grpc_address.c_str(),
                service.http_address.c_str(), with_health ? CheckHealth(service.grpc_address).c_str() : "");
  }
}

nlohmann::json MeshToJson(const MeshState& mesh, bool with_health) {
  nlohmann::json services = nlohmann::json::array();
  for (const MeshService& service : mesh.services) {
    nlohmann::json entry = {{"name", service.name}, {"pid", service.pid}, {"grpc_address", service.grpc_address},
                            {"http_address", service.http_address}, {"log", service.log_path}};
    if (with_health) entry["health"] = CheckHealth(service.grpc_address);
    services.push_back(entry);
  }
  return {{"data_directory", mesh.data_directory}, {"services", services}};
}

// Holds an exclusive lock on <data>/run/mesh.lock so that two `up`s cannot race.
class MeshLock {
 public:
  explicit MeshLock(const std::string& data_directory) {
    const fs::path path = RunDirectory(data_directory) / "mesh.lock";
    // O_CLOEXEC: the services `up` starts must not inherit (and so hold) the lock.
    descriptor_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (descriptor_ < 0 || flock(descriptor_, LOCK_EX | LOCK_NB) != 0) {
      throw CommandFailed(1, absl::StrCat("another `flotilla up` or `down` is running on ", data_directory));
    }
  }
  ~MeshLock() {
    if (descriptor_ >= 0) close(descriptor_);
  }

 private:
  int descriptor_ = -1;
};

void Up(const std::string& data_directory, int port_base, int timeout_seconds) {
  if (absl::Status status = PrepareDataDirectory(data_directory); !status.ok()) {
    throw CommandFailed(1, std::string(status.message()));
  }
  std::error_code error;
  fs::create_directories(RunDirectory(data_directory), error);
  fs::create_directories(fs::path(data_directory) / "logs", error);
  MeshLock lock(data_directory);

  if (absl::StatusOr<MeshState> running = LoadRunningMesh(data_directory); running.ok()) {
    std::printf("flotilla: the mesh is already running (data directory %s)\n", data_directory.c_str());
    PrintTable(*running, /*with_health=*/true);
    return;
  }

  const fs::path binaries = ExecutableDirectory();
  MeshState mesh;
  mesh.data_directory = data_directory;
  std::vector<int> pids;
  const auto fail = [&](const std::string& message) {
    StopProcesses(pids, std::chrono::seconds(10));
    throw CommandFailed(1, message);
  };

  // Waits for a service's ready file; a service that exits first fails the whole `up` with its last words.
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_seconds);
  const auto wait_until_ready = [&](MeshService& service) {
    const fs::path ready_file = RunDirectory(data_directory) / (service.name + ".ready");
    while (true) {
      int wait_status = 0;
      if (waitpid(service.pid, &wait_status, WNOHANG) == service.pid) {
        fail(absl::StrCat(service.name, " exited during start-up: ", LastLine(service.log_path),
                          " (log: ", service.log_path, ")"));
      }
      if (absl::StatusOr<nlohmann::json> ready = ReadJsonFile(ready_file); ready.ok()) {
        service.grpc_address = ready->value("grpc_address", "");
        service.http_address = ready->value("http_address", "");
        return;
      }
      if (Clock::now() > deadline) {
        fail(absl::StrCat(service.name, " did not become ready within ", timeout_seconds, "s (log: ",
                          service.log_path, ")"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  };

  const std::vector<std::string>& names = MeshServiceNames();
  std::string registry_address;
  for (size_t index = 0; index < names.size(); ++index) {
    const std::string& name = names[index];
    const fs::path binary = binaries / ("flotilla-" + name);
    if (!fs::exists(binary)) fail(absl::StrCat("cannot find ", binary.string(), " (build it first)"));
    const int grpc_port = port_base == 0 ? 0 : port_base + 2 * static_cast<int>(index);
    const int http_port = port_base == 0 ? 0 : grpc_port + 1;
    const fs::path ready_file = RunDirectory(data_directory) / (name + ".ready");
    fs::remove(ready_file, error);
    MeshService service;
    service.name = name;
    service.log_path = (fs::path(data_directory) / "logs" / (name + ".log")).string();
    std::vector<std::string> arguments = {absl::StrCat("--grpc_listen=127.0.0.1:", grpc_port),
                                          absl::StrCat("--http_listen=127.0.0.1:", http_port),
                                          absl::StrCat("--data_dir=", (fs::path(data_directory) / name).string()),
                                          absl::StrCat("--ready_file=", ready_file.string())};
    // Preprocess resolves model references at the mesh's registry.
    if (name == "preprocess") arguments.push_back(absl::StrCat("--registry=", registry_address));
    service.pid = Spawn(binary, arguments, service.log_path);
    pids.push_back(service.pid);
    mesh.services.push_back(service);
    // The registry comes first and must be ready: the others are told its address.
    if (name == "registry") {
      wait_until_ready(mesh.services.back());
      registry_address = mesh.services.back().grpc_address;
    }
  }
  for (MeshService& service : mesh.services) {
    if (service.grpc_address.empty()) wait_until_ready(service);
  }
  for (const MeshService& service : mesh.services) {
    const std::string health = CheckHealth(service.grpc_address);
    if (health != "SERVING") fail(absl::StrCat(service.name, " is not healthy: ", health));
  }

  std::ofstream(MeshFile(data_directory)) << MeshToJson(mesh, /*with_health=*/false).dump(2) << "\n";
  std::printf("flotilla: the mesh is up (data directory %s)\n", data_directory.c_str());
  PrintTable(mesh, /*with_health=*/true);
}

void Down(const std::string& data_directory, int timeout_seconds) {
  std::error_code error;
  if (!fs::is_directory(RunDirectory(data_directory), error)) {
    std::printf("flotilla: no mesh is running (data directory %s)\n", data_directory.c_str());
    return;
  }
  MeshLock lock(data_directory);
  absl::StatusOr<MeshState> mesh = LoadRunningMesh(data_directory);
  if (!mesh.ok()) {
    fs::remove(MeshFile(data_directory), error);
    std::printf("flotilla: no mesh is running (data directory %s)\n", data_directory.c_str());
    return;
  }
  std::vector<int> pids;
  // Stop in reverse start order: the gateway stops taking requests before its backends go.
  for (auto service = mesh->services.rbegin(); service != mesh->services.rend(); ++service) {
    if (IsOurProcess(service->pid)) pids.push_back(service->pid);
  }
  StopProcesses(pids, std::chrono::seconds(timeout_seconds));
  fs::remove(MeshFile(data_directory), error);
  std::printf("flotilla: stopped %zu services\n", pids.size());
}

void Status(const std::string& data_directory, bool as_json) {
  absl::StatusOr<MeshState> mesh = LoadRunningMesh(data_directory);
  if (!mesh.ok()) {
    if (as_json) {
      std::printf("%s\n", nlohmann::json({{"data_directory", data_directory}, {"services", nlohmann::json::array()}}).dump(2).c_str());
    }
    throw CommandFailed(3, absl::StrCat("no mesh is running (data directory ", data_directory, ")"));
  }
  if (as_json) {
    std::printf("%s\n", MeshToJson(*mesh, /*with_health=*/true).dump(2).c_str());
  } else {
    PrintTable(*mesh, /*with_health=*/true);
  }
}

}  // namespace

const std::vector<std::string>& MeshServiceNames() {
  static const std::vector<std::string> names = {"registry", "preprocess", "worker", "gateway"};
  return names;
}

absl::StatusOr<MeshState> LoadRunningMesh(const std::string& data_directory) {
  absl::StatusOr<nlohmann::json> document = ReadJsonFile(MeshFile(data_directory));
  if (!document.ok()) return absl::NotFoundError(absl::StrCat("no mesh is running (data directory ", data_directory, ")"));
  MeshState mesh;
  mesh.data_directory = data_directory;
  bool any_alive = false;
  for (const nlohmann::json& entry : document->value("services", nlohmann::json::array())) {
    MeshService service;
    service.name = entry.value("name", "");
    service.pid = entry.value("pid", 0);
    service.grpc_address = entry.value("grpc_address", "");
    service.http_address = entry.value("http_address", "");
    service.log_path = entry.value("log", "");
    any_alive = any_alive || IsOurProcess(service.pid);
    mesh.services.push_back(service);
  }
  if (!any_alive) return absl::NotFoundError(absl::StrCat("no mesh is running (data directory ", data_directory, ")"));
  return mesh;
}

absl::StatusOr<std::string> RunningServiceAddress(const std::string& data_directory, const std::string& service) {
  absl::StatusOr<MeshState> mesh = LoadRunningMesh(data_directory);
  if (!mesh.ok()) return mesh.status();
  for (const MeshService& entry : mesh->services) {
    if (entry.name == service) return entry.grpc_address;
  }
  return absl::NotFoundError(absl::StrCat("the mesh in ", data_directory, " has no ", service));
}

std::string CheckHealth(const std::string& grpc_address) {
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(grpc_address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return absl::StrCat("DOWN (", status.error_message(), ")");
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

std::string DefaultDataDirectory() {
  if (const char* home = std::getenv("FLOTILLA_HOME"); home && *home) return home;
  if (const char* home = std::getenv("HOME"); home && *home) return (fs::path(home) / ".flotilla").string();
  return ".flotilla";
}

void AddMeshCommands(CLI::App& app) {
  auto data_directory = std::make_shared<std::string>(DefaultDataDirectory());

  CLI::App* up = app.add_subcommand("up", "Start the local mesh (registry, preprocess, worker, gateway) on 127.0.0.1");
  auto port_base = std::make_shared<int>(7700);
  auto timeout = std::make_shared<int>(60);
  up->add_option("--data-dir", *data_directory, "State, logs and pid files (default $FLOTILLA_HOME or ~/.flotilla)");
  up->add_option("--port-base", *port_base,
                 "Service i gets gRPC port BASE+2i and HTTP port BASE+2i+1 (registry, preprocess, worker, "
                 "gateway); 0 picks free ports")
      ->check(CLI::Range(0, 65000));
  up->add_option("--timeout", *timeout, "Seconds to wait for every service to become healthy")->check(CLI::PositiveNumber);
  up->callback([=] { Up(*data_directory, *port_base, *timeout); });

  CLI::App* down = app.add_subcommand("down", "Stop the local mesh (SIGTERM, then SIGKILL after --timeout)");
  auto down_timeout = std::make_shared<int>(30);
  down->add_option("--data-dir", *data_directory, "The mesh's data directory");
  down->add_option("--timeout", *down_timeout, "Seconds each service may drain")->check(CLI::PositiveNumber);
  down->callback([=] { Down(*data_directory, *down_timeout); });

  CLI::App* status = app.add_subcommand("status", "Each service's health and addresses");
  auto as_json = std::make_shared<bool>(false);
  status->add_option("--data-dir", *data_directory, "The mesh's data directory");
  status->add_flag("--json", *as_json, "Print JSON instead of a table");
  status->callback([=] { Status(*data_directory, *as_json); });
}

}  // namespace flotilla::cli
