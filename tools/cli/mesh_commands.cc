// flotilla up / down / status: the local mesh as processes on 127.0.0.1 (the workers that
// `serve` adds are in serve_commands.cc; `down` and `status` cover them too).
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "flotilla/v1/worker.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "services/common/server.h"
#include "tools/cli/commands.h"
#include "tools/cli/local_processes.h"
#include "services/registry/names.h"
#include "tools/cli/mesh.h"

namespace flotilla::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path MeshFile(const std::string& data_directory) { return RunDirectory(data_directory) / "mesh.json"; }

std::string LastLine(const fs::path& path) { return LastLines(path, 1); }

absl::StatusOr<nlohmann::json> ReadJsonFile(const fs::path& path) {
  std::ifstream stream(path);
  if (!stream) return absl::NotFoundError(absl::StrCat("no file ", path.string()));
  nlohmann::json document = nlohmann::json::parse(stream, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) return absl::DataLossError(absl::StrCat(path.string(), " is not valid JSON"));
  return document;
}

// A worker's load as `status` shows it; nullopt when the worker does not answer GetLoad.
std::optional<flotilla::v1::WorkerLoad> AskLoad(const std::string& grpc_address) {
  if (grpc_address.empty()) return std::nullopt;
  auto stub = flotilla::v1::WorkerService::NewStub(grpc::CreateChannel(grpc_address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  flotilla::v1::WorkerLoad load;
  if (!stub->GetLoad(&context, flotilla::v1::GetLoadRequest(), &load).ok()) return std::nullopt;
  return load;
}

// A worker that is no longer running says so without a network round trip; "STARTING" while it
// has not written its ready file yet (loading the model).
std::string WorkerHealth(const MeshWorker& worker) {
  if (!IsFlotillaProcess(worker.pid)) return "EXITED";
  if (worker.grpc_address.empty()) return "STARTING";
  return CheckHealth(worker.grpc_address);
}

// A replica's agent rewrites nothing, but its rank 0 rewrites the ready file each time the group
// (re)starts: the addresses are read afresh.
void RefreshAddresses(const std::string& data_directory, MeshWorker& worker) {
  std::ifstream stream(RunDirectory(data_directory) / (WorkerStem(worker.name, worker.replica) + ".ready"));
  const nlohmann::json ready = nlohmann::json::parse(stream, nullptr, /*allow_exceptions=*/false);
  if (!ready.is_object()) return;
  worker.grpc_address = ready.value("grpc_address", worker.grpc_address);
  worker.http_address = ready.value("http_address", worker.http_address);
}

// The pids of a replica's ranks: its agent's children, in the order it started them (rank order).
std::vector<int> RankPids(int agent_pid) {
  std::ifstream stream(absl::StrCat("/proc/", agent_pid, "/task/", agent_pid, "/children"));
  std::vector<int> pids;
  for (int pid = 0; stream >> pid;) pids.push_back(pid);
  std::sort(pids.begin(), pids.end());
  return pids;
}

// SERVING / NOT_SERVING from rank 0, RESTARTING while the agent has no ranks, EXITED without it.
std::string ReplicaHealth(const MeshWorker& worker) {
  const std::string health = WorkerHealth(worker);
  if (health != "EXITED" && RankPids(worker.pid).empty()) return "RESTARTING";
  return health;
}

nlohmann::json ServiceToJson(const MeshService& service) {
  return {{"name", service.name}, {"pid", service.pid}, {"grpc_address", service.grpc_address},
          {"http_address", service.http_address}, {"log", service.log_path}};
}

nlohmann::json WorkerToJson(const MeshWorker& worker) {
  return {{"name", worker.name}, {"model", worker.model}, {"replica", worker.replica}, {"pid", worker.pid},
          {"grpc_address", worker.grpc_address}, {"http_address", worker.http_address}, {"log", worker.log_path}};
}

// `status`: the services, then the workers with their health and load.
void PrintTable(const MeshState& mesh, bool with_health) {
  std::printf("%-11s %-8s %-22s %-22s %s\n", "SERVICE", "PID", "GRPC", "HTTP", with_health ? "HEALTH" : "");
  for (const MeshService& service : mesh.services) {
    std::printf("%-11s %-8d %-22s %-22s %s\n", service.name.c_str(), service.pid, service.grpc_address.c_str(),
                service.http_address.c_str(), with_health ? CheckHealth(service.grpc_address).c_str() : "");
  }
  if (mesh.workers.empty()) return;
  int name_width = 20;
  for (const MeshWorker& worker : mesh.workers) name_width = std::max(name_width, static_cast<int>(worker.name.size()));
  std::printf("\n%-*s %-7s %-8s %-16s %-22s %-22s %-12s %-13s %-7s %s\n", name_width, "MODEL", "REPLICA", "PID",
              "RANK PIDS", "GRPC", "HTTP", "HEALTH", "KV BLOCKS", "RUNNING", "WAITING");
  for (MeshWorker worker : mesh.workers) {
    RefreshAddresses(mesh.data_directory, worker);
    const std::string health = ReplicaHealth(worker);
    const std::string ranks = absl::StrJoin(RankPids(worker.pid), ",");
    const std::optional<flotilla::v1::WorkerLoad> load =
        health == "SERVING" ? AskLoad(worker.grpc_address) : std::nullopt;
    const std::string blocks = load ? absl::StrCat(load->kv_blocks_used(), "/", load->kv_blocks_total()) : "-";
    const std::string running = load ? absl::StrCat(load->num_requests_running()) : "-";
    const std::string waiting = load ? absl::StrCat(load->num_requests_waiting()) : "-";
    std::printf("%-*s %-7d %-8d %-16s %-22s %-22s %-12s %-13s %-7s %s\n", name_width, worker.name.c_str(), worker.replica,
                worker.pid, ranks.empty() ? "-" : ranks.c_str(), worker.grpc_address.c_str(), worker.http_address.c_str(),
                health.c_str(), blocks.c_str(), running.c_str(), waiting.c_str());
  }
}

nlohmann::json StatusToJson(const MeshState& mesh) {
  nlohmann::json services = nlohmann::json::array();
  for (const MeshService& service : mesh.services) {
    nlohmann::json entry = ServiceToJson(service);
    entry["health"] = CheckHealth(service.grpc_address);
    services.push_back(entry);
  }
  nlohmann::json workers = nlohmann::json::array();
  for (MeshWorker worker : mesh.workers) {
    RefreshAddresses(mesh.data_directory, worker);
    nlohmann::json entry = WorkerToJson(worker);
    entry["health"] = ReplicaHealth(worker);
    // The agent is `pid`; its ranks are its children (rank 0 serves gRPC).
    nlohmann::json ranks = nlohmann::json::array();
    for (int rank_pid : RankPids(worker.pid)) ranks.push_back({{"rank", ranks.size()}, {"pid", rank_pid}});
    entry["ranks"] = ranks;
    entry["load"] = nullptr;
    if (entry["health"] == "SERVING") {
      if (std::optional<flotilla::v1::WorkerLoad> load = AskLoad(worker.grpc_address)) {
        entry["load"] = {{"kv_blocks_used", load->kv_blocks_used()}, {"kv_blocks_total", load->kv_blocks_total()},
                         {"running", load->num_requests_running()}, {"waiting", load->num_requests_waiting()},
                         {"draining", load->draining()}};
      }
    }
    workers.push_back(entry);
  }
  return {{"data_directory", mesh.data_directory}, {"services", services}, {"workers", workers}};
}

void Up(const std::string& data_directory, int port_base, int timeout_seconds) {
  if (absl::Status status = PrepareDataDirectory(data_directory); !status.ok()) {
    throw CommandFailed(1, std::string(status.message()));
  }
  std::error_code error;
  fs::create_directories(RunDirectory(data_directory), error);
  fs::create_directories(fs::path(data_directory) / "logs", error);
  MeshLock lock(data_directory, MeshLock::Mode::kFailIfHeld);

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
      if (ChildHasExited(service.pid)) {
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
    // Preprocess and the gateway resolve model references (processor files) at the mesh's registry.
    if (name == "preprocess" || name == "gateway") arguments.push_back(absl::StrCat("--registry=", registry_address));
    service.pid = SpawnDetached(binary, arguments, service.log_path);
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

  if (absl::Status saved = SaveMeshState(mesh); !saved.ok()) fail(std::string(saved.message()));
  std::printf("flotilla: the mesh is up (data directory %s)\n", data_directory.c_str());
  PrintTable(mesh, /*with_health=*/true);
}

void Down(const std::string& data_directory, int timeout_seconds) {
  std::error_code error;
  if (!fs::is_directory(RunDirectory(data_directory), error)) {
    std::printf("flotilla: no mesh is running (data directory %s)\n", data_directory.c_str());
    return;
  }
  MeshLock lock(data_directory, MeshLock::Mode::kFailIfHeld);
  absl::StatusOr<MeshState> mesh = LoadRunningMesh(data_directory);
  if (!mesh.ok()) {
    fs::remove(MeshFile(data_directory), error);
    std::printf("flotilla: no mesh is running (data directory %s)\n", data_directory.c_str());
    return;
  }
  // Workers first, as `unserve` stops them: they drain their requests while the gateway still
  // streams the tokens back.
  std::vector<int> worker_pids;
  for (const MeshWorker& worker : mesh->workers) {
    if (IsFlotillaProcess(worker.pid)) worker_pids.push_back(worker.pid);
  }
  StopProcesses(worker_pids, std::chrono::seconds(timeout_seconds));
  std::vector<int> pids;
  // Then the services in reverse start order: the gateway stops taking requests before its backends go.
  for (auto service = mesh->services.rbegin(); service != mesh->services.rend(); ++service) {
    if (IsFlotillaProcess(service->pid)) pids.push_back(service->pid);
  }
  StopProcesses(pids, std::chrono::seconds(timeout_seconds));
  fs::remove(MeshFile(data_directory), error);
  if (worker_pids.empty()) {
    std::printf("flotilla: stopped %zu services\n", pids.size());
  } else {
    std::printf("flotilla: stopped %zu %s and %zu services\n", worker_pids.size(),
                worker_pids.size() == 1 ? "worker" : "workers", pids.size());
  }
}

void Status(const std::string& data_directory, bool as_json) {
  absl::StatusOr<MeshState> mesh = LoadRunningMesh(data_directory);
  if (!mesh.ok()) {
    if (as_json) {
      std::printf("%s\n", nlohmann::json({{"data_directory", data_directory},
                                           {"services", nlohmann::json::array()},
                                           {"workers", nlohmann::json::array()}})
                              .dump(2)
                              .c_str());
    }
    throw CommandFailed(3, absl::StrCat("no mesh is running (data directory ", data_directory, ")"));
  }
  if (as_json) {
    std::printf("%s\n", StatusToJson(*mesh).dump(2).c_str());
  } else {
    PrintTable(*mesh, /*with_health=*/true);
  }
}

// `up --serve MODEL[=NAME]`: one ServeOptions per flag, the rest of serve's flags at their defaults.
ServeOptions ParseServeFlag(const std::string& value, const std::string& data_directory, int timeout_seconds) {
  ServeOptions options;
  options.data_directory = data_directory;
  options.timeout_seconds = timeout_seconds;
  // A reference has no '=', a folder rarely does: split at the last one.
  const size_t equals = value.rfind('=');
  options.model = equals == std::string::npos ? value : value.substr(0, equals);
  if (equals != std::string::npos) options.name = value.substr(equals + 1);
  if (options.model.empty()) throw CommandFailed(2, absl::StrCat("up --serve ", value, ": expected MODEL or MODEL=NAME"));
  return options;
}

}  // namespace

const std::vector<std::string>& MeshServiceNames() {
  static const std::vector<std::string> names = {"registry", "preprocess", "gateway"};
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
    any_alive = any_alive || IsFlotillaProcess(service.pid);
    mesh.services.push_back(service);
  }
  for (const nlohmann::json& entry : document->value("workers", nlohmann::json::array())) {
    MeshWorker worker;
    worker.name = entry.value("name", "");
    worker.model = entry.value("model", "");
    worker.replica = entry.value("replica", 0);
    worker.pid = entry.value("pid", 0);
    worker.grpc_address = entry.value("grpc_address", "");
    worker.http_address = entry.value("http_address", "");
    worker.log_path = entry.value("log", "");
    mesh.workers.push_back(worker);
  }
  if (!any_alive) return absl::NotFoundError(absl::StrCat("no mesh is running (data directory ", data_directory, ")"));
  return mesh;
}

fs::path RunDirectory(const std::string& data_directory) { return fs::path(data_directory) / "run"; }

std::string WorkerStem(const std::string& name, int replica) { return absl::StrCat("worker-", name, "-", replica); }

absl::Status SaveMeshState(const MeshState& mesh) {
  nlohmann::json services = nlohmann::json::array();
  for (const MeshService& service : mesh.services) services.push_back(ServiceToJson(service));
  nlohmann::json workers = nlohmann::json::array();
  for (const MeshWorker& worker : mesh.workers) workers.push_back(WorkerToJson(worker));
  const nlohmann::json document = {
      {"data_directory", mesh.data_directory}, {"services", services}, {"workers", workers}};
  const fs::path path = MeshFile(mesh.data_directory);
  const fs::path temporary = fs::path(path).concat(absl::StrCat(".", getpid(), ".tmp"));
  {
    std::ofstream stream(temporary);
    stream << document.dump(2) << "\n";
    if (!stream.flush()) return absl::InternalError(absl::StrCat("SaveMeshState: cannot write ", temporary.string()));
  }
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error) {
    return absl::InternalError(absl::StrCat("SaveMeshState: cannot rename ", temporary.string(), " to ",
                                            path.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

MeshLock::MeshLock(const std::string& data_directory, Mode mode) {
  const fs::path path = RunDirectory(data_directory) / "mesh.lock";
  // O_CLOEXEC: the processes `up` and `serve` start must not inherit (and so hold) the lock.
  descriptor_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  const int operation = mode == Mode::kWait ? LOCK_EX : LOCK_EX | LOCK_NB;
  if (descriptor_ < 0) {
    throw CommandFailed(1, absl::StrCat("cannot open ", path.string(), ": ", strerror(errno)));
  }
  if (flock(descriptor_, operation) != 0) {
    close(descriptor_);
    throw CommandFailed(1, absl::StrCat("another `flotilla up` or `down` is running on ", data_directory));
  }
}

MeshLock::~MeshLock() {
  if (descriptor_ >= 0) close(descriptor_);
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

  CLI::App* up = app.add_subcommand("up", "Start the local mesh (registry, preprocess, gateway) on 127.0.0.1");
  auto port_base = std::make_shared<int>(7700);
  auto timeout = std::make_shared<int>(60);
  auto serve = std::make_shared<std::vector<std::string>>();
  up->add_option("--data-dir", *data_directory, "State, logs and pid files (default $FLOTILLA_HOME or ~/.flotilla)");
  up->add_option("--port-base", *port_base,
                 "Service i gets gRPC port BASE+2i and HTTP port BASE+2i+1 (registry, preprocess, gateway); "
                 "0 picks free ports (workers always pick free ports)")
      ->check(CLI::Range(0, 65000));
  up->add_option("--timeout", *timeout, "Seconds to wait for every service to become healthy")->check(CLI::PositiveNumber);
  up->add_option("--serve", *serve,
                 "Then serve this model (repeatable): MODEL or MODEL=NAME, as `flotilla serve MODEL --name NAME` "
                 "with its other flags at their defaults; a NAME already served is left as it is")
      ->allow_extra_args(false);
  up->callback([=] {
    Up(*data_directory, *port_base, *timeout);
    absl::StatusOr<MeshState> mesh = LoadRunningMesh(*data_directory);
    for (const std::string& value : *serve) {
      ServeOptions options = ParseServeFlag(value, *data_directory, /*timeout_seconds=*/600);
      if (options.name.empty()) options.name = registry::DefaultServedModelName(options.model);
      const bool served = mesh.ok() && std::any_of(mesh->workers.begin(), mesh->workers.end(), [&](const MeshWorker& worker) {
        return worker.name == options.name && IsFlotillaProcess(worker.pid);
      });
      if (served) {
        std::printf("flotilla: %s is already served\n", options.name.c_str());
        continue;
      }
      ServeModel(options);
    }
  });

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
