// The local mesh: the four service binaries started as processes on 127.0.0.1, their state kept
// under a data directory:
//
//   <data>/run/mesh.json          what `up` started: pids and addresses (read by status, down,
//                                 and by commands that need a service's address)
//   <data>/run/<service>.ready    each service's ready file
//   <data>/logs/<service>.log     each service's JSON-lines log
//   <data>/<service>/             each service's own state (the registry's blobs and SQLite)
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <absl/status/statusor.h>

namespace flotilla::cli {

struct MeshService {
  std::string name;  // "registry", "preprocess", "worker", "gateway"
  int pid = 0;
  std::string grpc_address;
  std::string http_address;
  std::string log_path;
};

struct MeshState {
  std::string data_directory;
  std::vector<MeshService> services;
};

// The service binaries, in start order.
const std::vector<std::string>& MeshServiceNames();

// The running mesh of a data directory, or NOT_FOUND when none runs there.
absl::StatusOr<MeshState> LoadRunningMesh(const std::string& data_directory);

// The gRPC address of one service of the running mesh (e.g. for `flotilla push`).
absl::StatusOr<std::string> RunningServiceAddress(const std::string& data_directory, const std::string& service);

// "SERVING", "NOT_SERVING" or "DOWN (reason)", asked over grpc.health.v1 with a short deadline.
std::string CheckHealth(const std::string& grpc_address);

}  // namespace flotilla::cli
