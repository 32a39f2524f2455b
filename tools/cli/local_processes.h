// The detached processes of the local mesh (services and model workers): starting one with its
// log, telling whether a recorded pid is still ours, stopping a group of them with a drain period,
// and reading the last lines of a log for an error message. Used by mesh_commands.cc (up, down)
// and serve_commands.cc (serve, unserve).
//
//   const int pid = SpawnDetached(ExecutableDirectory() / "flotilla-gateway",
//                                 {"--grpc_listen=127.0.0.1:0"}, "/tmp/gateway.log");
//   ...
//   StopProcesses({pid}, std::chrono::seconds(30));  // SIGTERM, then SIGKILL after 30 s
//
// Thread-safety: the functions keep no state; they are safe to call from any thread, but
// SpawnDetached forks, so call it before starting threads that hold locks.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace flotilla::cli {

// The folder of the running executable (where the service binaries sit beside `flotilla`).
std::filesystem::path ExecutableDirectory();

// Starts `binary` with `arguments` in its own session, stdout and stderr appended to `log_path`,
// stdin from /dev/null; returns its pid. The child stays our child until we exit, so waitpid()
// notices an early exit.
int SpawnDetached(const std::filesystem::path& binary, const std::vector<std::string>& arguments,
                  const std::filesystem::path& log_path);

// True while `pid` runs a flotilla-* binary: pids are reused, so a recorded pid alone proves nothing.
bool IsFlotillaProcess(int pid);

// True when `pid` is our child and has exited (it is reaped).
bool ChildHasExited(int pid);

// Sends SIGTERM to every pid (they drain), waits up to `timeout` for all of them, then SIGKILLs the
// ones left. Pids that are not running are skipped.
void StopProcesses(const std::vector<int>& pids, std::chrono::seconds timeout);

// The last `count` non-empty lines of a file (fewer when it is shorter), joined with '\n'.
std::string LastLines(const std::filesystem::path& path, int count);

}  // namespace flotilla::cli
