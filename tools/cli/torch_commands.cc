#include "tools/cli/torch_commands.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <absl/strings/str_cat.h>

#include "tools/cli/commands.h"

namespace flotilla::cli {
namespace {

namespace fs = std::filesystem;

// flotilla-torch in the folder of the running flotilla (build/bin, or the install's bin).
std::string TorchExecutablePath() {
  std::error_code error;
  fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (error) return "flotilla-torch";  // execvp then searches PATH
  return (self.parent_path() / "flotilla-torch").string();
}

[[noreturn]] void ExecTorchCommand(const std::string& command, const std::vector<std::string>& arguments) {
  const std::string path = TorchExecutablePath();
  std::vector<std::string> words = {path, command};
  words.insert(words.end(), arguments.begin(), arguments.end());
  std::vector<char*> argv;
  for (std::string& word : words) argv.push_back(word.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  execvp(path.c_str(), argv.data());
  const int exec_errno = errno;
  throw CommandFailed(2, absl::StrCat(command, ": cannot run ", path, ": ", std::strerror(exec_errno),
                                      ". The LibTorch commands are built into flotilla-torch beside flotilla; "
                                      "configure with -DFLOTILLA_WITH_TORCH=ON and build the flotilla-torch target"));
}

}  // namespace

void AddTorchCommandForwarders(CLI::App& app) {
  for (const TorchCommand& torch_command : kTorchCommands) {
    CLI::App* command = app.add_subcommand(torch_command.name, torch_command.description);
    // Everything after the command's name, --help included, is flotilla-torch's to parse.
    command->prefix_command();
    command->set_help_flag();
    const std::string name = torch_command.name;
    command->callback([command, name] { ExecTorchCommand(name, command->remaining()); });
  }
}

}  // namespace flotilla::cli
