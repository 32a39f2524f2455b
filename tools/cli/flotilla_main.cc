// flotilla: the command line for a Flotilla mesh. `flotilla --help` lists the commands;
// `flotilla COMMAND --help` explains one.
#include "services/common/logging.h"
#include "tools/cli/commands.h"
#include "tools/cli/torch_commands.h"

int main(int argc, char** argv) {
  CLI::App app{"Flotilla: push, preprocess, run and serve Hugging Face models.", "flotilla"};
  app.require_subcommand(1);
  flotilla::cli::AddMeshCommands(app);
  flotilla::cli::AddServeCommands(app);
  flotilla::cli::AddChatCommands(app);
  flotilla::cli::AddRegistryCommands(app);
  flotilla::cli::AddPreprocessCommands(app);
  flotilla::cli::AddChatTemplateCommands(app);
#ifdef FLOTILLA_WITH_TORCH_COMMANDS
  flotilla::cli::AddTorchCommandForwarders(app);  // run by flotilla-torch
#endif
  return flotilla::cli::RunCommandLine(app, argc, argv);
}
