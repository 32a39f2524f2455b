#include "tools/cli/local_processes.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

namespace flotilla::cli {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path ExecutableDirectory() {
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  return error ? fs::current_path() : self.parent_path();
}

int SpawnDetached(const fs::path& binary, const std::vector<std::string>& arguments, const fs::path& log_path) {
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

bool IsFlotillaProcess(int pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  std::ifstream cmdline(absl::StrCat("/proc/", pid, "/cmdline"));
  std::string program;
  std::getline(cmdline, program, '\0');
  return fs::path(program).filename().string().rfind("flotilla-", 0) == 0;
}

bool ChildHasExited(int pid) {
  int wait_status = 0;
  return pid > 0 && waitpid(pid, &wait_status, WNOHANG) == pid;
}

void StopProcesses(const std::vector<int>& pids, std::chrono::seconds timeout) {
  for (int pid : pids) {
    if (pid > 0) kill(pid, SIGTERM);
  }
  const auto deadline = Clock::now() + timeout;
  for (int pid : pids) {
    while (pid > 0 && kill(pid, 0) == 0 && Clock::now() < deadline) {
      waitpid(pid, nullptr, WNOHANG);  // reaps it when it is our child (a failed `up` or `serve`)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (pid > 0 && kill(pid, 0) == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
}

std::string LastLines(const fs::path& path, int count) {
  std::ifstream stream(path);
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(stream, line)) {
    if (line.empty()) continue;
    lines.push_back(line);
    if (static_cast<int>(lines.size()) > count) lines.pop_front();
  }
  return absl::StrJoin(lines, "\n");
}

}  // namespace flotilla::cli
