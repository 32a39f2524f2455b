// The agent of one worker replica (the role torchrun's elastic agent plays): starts the replica's N
// rank processes — this same binary with --rank r and the rendezvous address — and restarts the
// whole group when one of them dies, since a tensor-parallel group cannot continue without any of
// its ranks. `flotilla-worker` runs as an agent unless --rank is given; on Kubernetes, one pod runs
// one agent (and its N ranks), or each rank is started with --rank by the pod spec.
//
//   WorkerGroupOptions options{.executable = "/proc/self/exe", .arguments = {"--model=...", ...},
//                              .world_size = 2, .master_address = "127.0.0.1"};
//   return RunWorkerGroup(options);   // until SIGTERM (forwarded to rank 0, which drains) or a
//                                     // rank's error exit
//
// Restart policy (ActionAfterRankExit): a rank killed by a signal, or one that exits with
// kExitTensorParallelGroupBroken (its peer died), restarts the group — every other rank is killed
// first, since it can only wait for the dead one. A rank that exits 0 or with any other code (a bad
// flag, a model that does not load) stops the group with that code: restarting cannot fix it.
// Restarts back off from 1 s to 30 s while the group keeps dying within a minute of starting.
//
// Thread-safety: RunWorkerGroup owns the calling thread and the process's SIGTERM/SIGINT/SIGCHLD.
#pragma once

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace flotilla::worker {

struct WorkerGroupOptions {
  std::string executable;
  // The agent's own flags, passed on to every rank (each also gets --rank and --master_port).
  std::vector<std::string> arguments;
  int world_size = 1;
  std::string master_address = "127.0.0.1";
  int master_port = 0;  // 0: a free port, chosen again at each start
  // After rank 0 exits on SIGTERM, how long the other ranks get to leave before they are killed.
  absl::Duration follower_grace = absl::Seconds(10);
};

// The exit code of a rank whose group broke (a collective failed: a peer died); the agent restarts
// the whole group.
inline constexpr int kExitTensorParallelGroupBroken = 3;

enum class GroupAction { kRestart, kStop };

// What the agent does when a rank exits with `wait_status` (as waitpid reports it) while the agent
// is not itself terminating.
GroupAction ActionAfterRankExit(int wait_status);

// The exit code the agent itself returns for a rank's `wait_status` when it stops.
int AgentExitCode(int wait_status);

// Runs the group until it stops; returns the agent's exit code.
int RunWorkerGroup(const WorkerGroupOptions& options);

}  // namespace flotilla::worker
