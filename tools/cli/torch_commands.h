// The commands that run on LibTorch (models and image processors) live in a second executable,
// flotilla-torch, beside flotilla. Loading LibTorch costs about 0.4 s of dynamic linking and static
// initialisation before main, and every other command (push, pull, ls, tokenize, chat-template,
// up) starts in milliseconds without it. `flotilla forward ARGS...` execs
// `flotilla-torch forward ARGS...`, so exit codes, output and signals are the real command's.
//
// flotilla-torch takes each command's description from here too (TorchCommandDescription), and
// tests/integration/test_cli_commands.py checks that both executables list the same commands: adding
// a LibTorch command means adding its line here.
#pragma once

#include <string_view>

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
    {"embed",
     "Embeddings from a sentence-transformers encoder or a CLIP checkpoint (texts and/or images); prints "
     "{\"embeddings\": [...]} (CLIP with both: text_embeds, image_embeds, logits_per_text, logits_per_image)."},
};

// The description of kTorchCommands' `name` (a compile-time lookup; an unknown name does not compile).
consteval const char* TorchCommandDescription(std::string_view name) {
  for (const TorchCommand& command : kTorchCommands) {
    if (std::string_view(command.name) == name) return command.description;
  }
  throw "not in kTorchCommands";
}

// Adds each of kTorchCommands to `app` as a subcommand that hands its whole command line, --help
// included, to flotilla-torch.
void AddTorchCommandForwarders(CLI::App& app);

}  // namespace flotilla::cli
