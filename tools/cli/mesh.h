// The local mesh: the service binaries started as processes on 127.0.0.1, the model workers that
// `flotilla serve` starts beside them, and their state kept under a data directory:
//
//   <data>/run/mesh.json          what `up` and `serve` started: pids and addresses (read by status,
//                                 down, unserve, and by commands that need a service's address)
//   <data>/run/mesh.lock          held while a command changes mesh.json
//   <data>/run/<service>.ready    each service's ready file
//   <data>/run/worker-<name>-<i>.ready   each worker's (model <name>, replica <i>)
//   <data>/logs/<service>.log     each service's JSON-lines log
//   <data>/logs/worker-<name>-<i>.log
//   <data>/<service>/             each service's own state (the registry's blobs and SQLite)
//   <data>/worker-<name>-<i>/     each worker's
//
//   absl::StatusOr<MeshState> mesh = LoadRunningMesh(DefaultDataDirectory());
//   if (mesh.ok()) for (const MeshWorker& worker : mesh->workers) Use(worker.grpc_address);
//
// Thread-safety: the functions keep no state. Processes coordinate through MeshLock: a command that
// rewrites mesh.json holds it from LoadRunningMesh to SaveMeshState.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <absl/status/statusor.h>

namespace flotilla::cli {

struct MeshService {
  std::string name;  // "registry", "preprocess", "gateway"
  int pid = 0;
  std::string grpc_address;
  std::string http_address;
  std::string log_path;
};

// One worker process: one replica of one served model.
struct MeshWorker {
  std::string name;   // the served model name (what clients send as "model")
  std::string model;  // the registry reference or absolute folder it loaded
  int replica = 0;
  int pid = 0;
  std::string grpc_address;  // empty until its ready file appeared
  std::string http_address;
  std::string log_path;
};

struct MeshState {
  std::string data_directory;
  std::vector<MeshService> services;
  std::vector<MeshWorker> workers;
};

// The service binaries `up` starts, in start order (workers come from `serve`).
const std::vector<std::string>& MeshServiceNames();

// The running mesh of a data directory, or NOT_FOUND when none runs there. Workers are listed as
// recorded, including ones that have died since (IsFlotillaProcess tells).
absl::StatusOr<MeshState> LoadRunningMesh(const std::string& data_directory);

// Writes <data>/run/mesh.json (atomically: a reader sees the old or the new state, never half).
absl::Status SaveMeshState(const MeshState& mesh);

// <data>/run: the services' and workers' ready files.
std::filesystem::path RunDirectory(const std::string& data_directory);
// The stem of a worker's files: logs/<stem>.log, run/<stem>.ready, <data>/<stem>/.
std::string WorkerStem(const std::string& name, int replica);

// The gRPC address of one service of the running mesh (e.g. for `flotilla push`).
absl::StatusOr<std::string> RunningServiceAddress(const std::string& data_directory, const std::string& service);

// "SERVING", "NOT_SERVING" or "DOWN (reason)", asked over grpc.health.v1 with a short deadline.
std::string CheckHealth(const std::string& grpc_address);

// An exclusive lock on <data>/run/mesh.lock (the run directory must exist), released on
// destruction. kFailIfHeld throws CommandFailed when another command holds it (two `up`s must not
// race); kWait blocks until it is free (a `serve` waits for an `unserve` to finish writing).
class MeshLock {
 public:
  enum class Mode { kFailIfHeld, kWait };
  MeshLock(const std::string& data_directory, Mode mode);
  ~MeshLock();
  MeshLock(const MeshLock&) = delete;
  MeshLock& operator=(const MeshLock&) = delete;

 private:
  int descriptor_ = -1;
};

// What `flotilla serve` takes (serve_commands.cc); `up --serve` fills it too.
struct ServeOptions {
  std::string data_directory;
  std::string model;  // a registry reference namespace/name[@revision] or a local folder
  std::string name;   // empty: the model's repository name, lowercase
  int replicas = 1;
  int tensor_parallel_size = 1;  // ranks (processes) per replica, started and restarted by its agent
  std::string tp_plan;           // a JSON plan file overriding the model's; empty: the model's
  std::string dtype;      // empty: the worker's default
  std::string attention;  // empty: the worker's default
  std::string kernels;    // the worker's --kernels mapping; empty: its default
  std::string device;     // cpu, cuda or cuda:N; empty: the worker's default (cpu)
  std::string task = "auto";
  int64_t kv_cache_memory = 0;  // bytes; 0: the worker's default
  int max_model_len = 0;
  int max_num_batched_tokens = 0;
  int max_num_seqs = 0;
  int timeout_seconds = 600;
  bool as_json = false;
};

// Starts the workers of one served model on the running mesh, records them in mesh.json and waits
// until the gateway lists the model with every replica; prints where it is served. Throws
// CommandFailed (after stopping what it started) when it cannot.
void ServeModel(const ServeOptions& options);

}  // namespace flotilla::cli
