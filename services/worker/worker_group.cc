#include "services/worker/worker_group.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/common/logging.h"

namespace flotilla::worker {
namespace {

// A port the kernel has just handed out on `address` (the rendezvous store binds it a moment
// later; the same race torchrun accepts for its default port).
int FreePort(const std::string& address) {
  const int socket_descriptor = socket(AF_INET, SOCK_STREAM, 0);
  if (socket_descriptor < 0) return 0;
  sockaddr_in socket_address{};
  socket_address.sin_family = AF_INET;
  socket_address.sin_port = 0;
  if (inet_pton(AF_INET, address == "localhost" ? "127.0.0.1" : address.c_str(), &socket_address.sin_addr) != 1) {
    socket_address.sin_addr.s_addr = htonl(INADDR_ANY);
  }
  int port = 0;
  socklen_t length = sizeof(socket_address);
  if (bind(socket_descriptor, reinterpret_cast<sockaddr*>(&socket_address), sizeof(socket_address)) == 0 &&
      getsockname(socket_descriptor, reinterpret_cast<sockaddr*>(&socket_address), &length) == 0) {
    port = ntohs(socket_address.sin_port);
  }
  close(socket_descriptor);
  return port;
}

std::string DescribeExit(int wait_status) {
  if (WIFSIGNALED(wait_status)) return absl::StrCat("killed by signal ", WTERMSIG(wait_status), " (", strsignal(WTERMSIG(wait_status)), ")");
  return absl::StrCat("exited with code ", WEXITSTATUS(wait_status));
}

pid_t StartRank(const WorkerGroupOptions& options, int rank, int port, const sigset_t& blocked) {
  std::vector<std::string> arguments = {options.executable};
  arguments.insert(arguments.end(), options.arguments.begin(), options.arguments.end());
  arguments.push_back(absl::StrCat("--rank=", rank));
  arguments.push_back(absl::StrCat("--master_port=", port));
  const pid_t agent = getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // The rank dies with its agent, so killing the agent (SIGKILL included) never leaves a rank
  // serving alone.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != agent) _exit(1);
  sigprocmask(SIG_UNBLOCK, &blocked, nullptr);
  std::vector<char*> argv;
  for (std::string& argument : arguments) argv.push_back(argument.data());
  argv.push_back(nullptr);
  execv(options.executable.c_str(), argv.data());
  _exit(127);
}

}  // namespace

GroupAction ActionAfterRankExit(int wait_status) {
  if (WIFSIGNALED(wait_status)) return GroupAction::kRestart;
  if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == kExitTensorParallelGroupBroken) return GroupAction::kRestart;
  return GroupAction::kStop;
}

int AgentExitCode(int wait_status) {
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 1;
}

int RunWorkerGroup(const WorkerGroupOptions& options) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::Duration backoff = absl::Seconds(1);
  bool terminating = false;
  // Waits up to `duration` for a stop signal; true when one came.
  auto wait_for_stop_signal = [&](absl::Duration duration) {
    timespec timeout = absl::ToTimespec(duration);
    siginfo_t info;
    const int signal_number = sigtimedwait(&signals, &info, &timeout);
    return signal_number == SIGTERM || signal_number == SIGINT;
  };

  while (true) {
    const int port = options.master_port > 0 ? options.master_port : FreePort(options.master_address);
    std::map<pid_t, int> ranks;  // pid -> rank
    std::vector<pid_t> pids(options.world_size);
    for (int rank = 0; rank < options.world_size; ++rank) {
      pids[rank] = StartRank(options, rank, port, signals);
      if (pids[rank] < 0) {
        LogError("cannot start a worker rank", {{"rank", rank}, {"error", std::strerror(errno)}});
        for (auto& [pid, started_rank] : ranks) kill(pid, SIGKILL);
        return 1;
      }
      ranks[pids[rank]] = rank;
    }
    LogInfo("worker group started", {{"world_size", options.world_size}, {"master_port", port},
                                     {"pids", std::vector<int>(pids.begin(), pids.end())}});
    const absl::Time started = absl::Now();

    int first_status = 0;
    int first_rank = -1;
    int rank_zero_status = 0;
    absl::Time rank_zero_exited = absl::InfiniteFuture();
    while (!ranks.empty()) {
      if (wait_for_stop_signal(absl::Milliseconds(100)) && !terminating) {
        // Rank 0 drains (it stops admitting, finishes its requests, releases the followers).
        terminating = true;
        if (ranks.contains(pids[0])) kill(pids[0], SIGTERM);
      }
      int status = 0;
      pid_t pid;
      while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        auto found = ranks.find(pid);
        if (found == ranks.end()) continue;
        const int rank = found->second;
        ranks.erase(found);
        if (rank == 0) {
          rank_zero_status = status;
          rank_zero_exited = absl::Now();
        }
        if (first_rank >= 0) continue;
        first_rank = rank;
        first_status = status;
        if (terminating && rank == 0) continue;  // the followers leave on rank 0's shutdown message
        if (!terminating) {
          LogWarning("a worker rank exited; the group stops", {{"rank", rank}, {"exit", DescribeExit(status)}});
        }
        // The others can only wait for the missing rank: end them now.
        for (auto& [other, other_rank] : ranks) kill(other, SIGKILL);
      }
      if (!ranks.empty() && absl::Now() - rank_zero_exited > options.follower_grace) {
        for (auto& [other, other_rank] : ranks) kill(other, SIGKILL);
      }
    }
    if (terminating) return AgentExitCode(rank_zero_status);
    if (ActionAfterRankExit(first_status) == GroupAction::kStop) {
      LogInfo("worker group stopped", {{"rank", first_rank}, {"exit", DescribeExit(first_status)}});
      return AgentExitCode(first_status);
    }
    // A group that ran a while restarts at once; one that keeps dying backs off.
    if (absl::Now() - started > absl::Minutes(1)) backoff = absl::Seconds(1);
    LogWarning("restarting the worker group", {{"after_seconds", absl::ToDoubleSeconds(backoff)},
                                               {"rank", first_rank}, {"exit", DescribeExit(first_status)}});
    if (wait_for_stop_signal(backoff)) return 0;
    backoff = std::min(backoff * 2, absl::Seconds(30));
  }
}

}  // namespace flotilla::worker
