// flotilla-torch: the flotilla commands that run on LibTorch (see torch_commands.h). `flotilla`
// execs it for them; it can also be run directly, with the same arguments.
#include "tools/cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"Flotilla's LibTorch commands: run models and image processors (`flotilla` forwards to these).",
               "flotilla"};
  app.require_subcommand(1);
  flotilla::cli::AddImageCommands(app);
  flotilla::cli::AddModelCommands(app);
  return flotilla::cli::RunCommandLine(app, argc, argv);
}
