#include "tools/cli/commands.h"

#include <cstdio>

namespace flotilla::cli {

int RunCommandLine(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  } catch (const CommandFailed& failure) {
    std::fprintf(stderr, "flotilla: %s\n", failure.what());
    return failure.exit_code;
  }
  return 0;
}

}  // namespace flotilla::cli
