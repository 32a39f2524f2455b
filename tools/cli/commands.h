// The flotilla CLI: subcommands in groups, each group in its own file, added to the app here. To
// add a command: write a function in the file of its group (or a new file) and call it from
// flotilla_main.cc. The LibTorch groups (image, model) are called from torch_main.cc instead: they
// run in flotilla-torch, which flotilla execs for them (torch_commands.h).
//
// A command reports failure by printing one line to stderr and throwing CommandFailed, which the
// main turns into the exit code.
#pragma once

#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>
#include <absl/status/statusor.h>

#include "services/registry/registry_client.h"

namespace flotilla::cli {

struct CommandFailed : std::runtime_error {
  CommandFailed(int exit_code, const std::string& message)
      : std::runtime_error(message), exit_code(exit_code) {}
  int exit_code;
};

// Parses the command line and runs the chosen command: 0, CLI11's code for a usage error, or a
// CommandFailed's exit code after printing its message to stderr.
int RunCommandLine(CLI::App& app, int argc, char** argv);

// up, down, status: the local mesh (mesh_commands.cc).
void AddMeshCommands(CLI::App& app);
// serve, unserve: model workers on the local mesh (serve_commands.cc).
void AddServeCommands(CLI::App& app);
// chat: a served model through the gateway (chat_commands.cc).
void AddChatCommands(CLI::App& app);
// push, pull, ls, log, tag, rm, gc: the registry (registry_commands.cc).
void AddRegistryCommands(CLI::App& app);
// tokenize, detokenize: tokenizer.json from a local directory (preprocess_commands.cc).
void AddPreprocessCommands(CLI::App& app);

// chat-template: render a model's chat template (chat_template_commands.cc).
void AddChatTemplateCommands(CLI::App& app);

// process-image: images to pixel_values (image_commands.cc; in flotilla-torch).
void AddImageCommands(CLI::App& app);
// forward, generate, embed, save-pretrained: run models (model_commands.cc; in flotilla-torch).
void AddModelCommands(CLI::App& app);

// The data directory: --data-dir, else $FLOTILLA_HOME, else ~/.flotilla.
std::string DefaultDataDirectory();

// The registry's gRPC address: `explicit_address` when not empty, else $FLOTILLA_REGISTRY, else the
// running local mesh's under `data_directory`; FailedPrecondition saying how to give one otherwise.
absl::StatusOr<std::string> RegistryAddress(const std::string& explicit_address, const std::string& data_directory);

// Where registry references are pulled to: $FLOTILLA_CACHE, else <data_directory>/cache.
std::string ModelCacheDirectory(const std::string& data_directory);

// A local folder for a command's MODEL argument: a folder as it is, or a registry reference
// (namespace/name[@revision]) pulled into the model cache once per commit (<cache>/<namespace>/
// <name>/<commit id>/, so a moved branch gets its new commit). `weights` false pulls only the
// small files (config, tokenizer, templates, processors), for commands that need no weights.
// Throws CommandFailed with the registry's reason.
std::string LocalModelFolder(const std::string& folder_or_reference, const std::string& registry_address,
                             const std::string& data_directory, bool weights);
// --registry and --data-dir for commands that take such a MODEL argument.
struct ModelSourceFlags {
  std::string registry;
  std::string data_directory = DefaultDataDirectory();
};
void AddModelSourceFlags(CLI::App* command, ModelSourceFlags& flags);

// TLS and token for talking to the registry: TLS when `tls` is set or a CA file is given (`tls_ca`,
// else $FLOTILLA_TLS_CA); InvalidArgument when the CA file is not a PEM certificate.
absl::StatusOr<registry::ConnectionOptions> RegistryConnection(bool tls, const std::string& tls_ca, const std::string& token);

}  // namespace flotilla::cli
