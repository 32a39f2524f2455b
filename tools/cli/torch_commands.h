// The commands that run on LibTorch (models and image processors) live in a second executable,
// flotilla-torch, beside flotilla. Loading LibTorch costs about 0.4 s of dynamic linking and static
// initialisation before main, and every other command (push, pull, ls, tokenize, chat-template,
// up) starts in milliseconds without it. `flotilla forward ARGS...` execs
// `flotilla-torch forward ARGS...`, so exit codes, output and signals are the real command's.
//
// tests/integration/test_cli_commands.py checks this list against the commands flotilla-torch
// has; adding a LibTorch command means adding its line here.
#pragma once

#include <CLI/CLI.hpp>

namespace flotilla::cli {

struct TorchCommand {
  const char* name;
  const char* description;  // as `flotilla --help` lists it
};

inline constexpr TorchCommand kTorchCommands[] = {
    {"process-image", "Decode images and compute pixel_values with a model's preprocessor_config.json."},
    {"save-pretrained", "Load a model and write it as save_pretrained does (e.g. float32 to bfloat16)."},
    {"forward", "Run a model on token ids; write logits and hidden states."},
    {"generate", "Greedy generation with a KV cache; prints {\"ids\": [...]} (and \"text\")."},
    {"embed", "Sentence embeddings from an encoder; prints {\"embeddings\": [...]}."},
};

// Adds each of kTorchCommands to `app` as a subcommand that hands its whole command line, --help
// included, to flotilla-torch.
void AddTorchCommandForwarders(CLI::App& app);

}  // namespace flotilla::cli
