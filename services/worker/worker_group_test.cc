// The agent's restart policy, on real wait statuses of real child processes.
#include "services/worker/worker_group.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace flotilla::worker {
namespace {

// The wait status of a child that exits with `code` or, when `signal_number` > 0, is killed by it.
int StatusOf(int code, int signal_number = 0) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (signal_number > 0) raise(signal_number);
    _exit(code);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

TEST(WorkerGroupTest, ARankKilledBySignalRestartsTheGroup) {
  EXPECT_EQ(ActionAfterRankExit(StatusOf(0, SIGKILL)), GroupAction::kRestart);
  EXPECT_EQ(ActionAfterRankExit(StatusOf(0, SIGSEGV)), GroupAction::kRestart);
}

TEST(WorkerGroupTest, ARankWhosePeerDiedRestartsTheGroup) {
  EXPECT_EQ(ActionAfterRankExit(StatusOf(kExitTensorParallelGroupBroken)), GroupAction::kRestart);
}

TEST(WorkerGroupTest, ACleanExitOrAConfigurationErrorStopsTheGroup) {
  EXPECT_EQ(ActionAfterRankExit(StatusOf(0)), GroupAction::kStop);
  EXPECT_EQ(ActionAfterRankExit(StatusOf(1)), GroupAction::kStop);
  EXPECT_EQ(ActionAfterRankExit(StatusOf(2)), GroupAction::kStop);
}

TEST(WorkerGroupTest, TheAgentExitsWithTheRanksCodeOrTheShellsSignalConvention) {
  EXPECT_EQ(AgentExitCode(StatusOf(0)), 0);
  EXPECT_EQ(AgentExitCode(StatusOf(1)), 1);
  EXPECT_EQ(AgentExitCode(StatusOf(0, SIGKILL)), 128 + SIGKILL);
}

}  // namespace
}  // namespace flotilla::worker
