// flotilla chat-template: render a model directory's chat template for a conversation, printing
// exactly the text transformers' apply_chat_template(..., tokenize=False) returns.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include <absl/strings/str_cat.h>

#include "services/preprocess/chat_template/chat_template.h"
#include "tools/cli/commands.h"

namespace flotilla::cli {
namespace {

struct ChatTemplateArguments {
  std::string model_directory;
  std::string messages_file;
  std::string tools_file;
  std::string template_name;
  std::string extra_context;
  bool add_generation_prompt = false;
  int repeat = 1;
  ModelSourceFlags model_source;
};

std::string ReadWholeFile(const std::string& path, const std::string& what) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) throw CommandFailed(2, absl::StrCat("chat-template: cannot read ", what, " file ", path));
  std::stringstream contents;
  contents << stream.rdbuf();
  return contents.str();
}

void RunChatTemplate(const ChatTemplateArguments& arguments) {
  const std::string folder = LocalModelFolder(arguments.model_directory, arguments.model_source.registry,
                                              arguments.model_source.data_directory, /*weights=*/false);
  absl::StatusOr<chat_template::ModelChatTemplate> model = chat_template::LoadChatTemplate(folder);
  if (!model.ok()) throw CommandFailed(1, std::string(model.status().message()));
  chat_template::ChatTemplateOptions options;
  options.add_generation_prompt = arguments.add_generation_prompt;
  if (!arguments.tools_file.empty()) options.tools_json = ReadWholeFile(arguments.tools_file, "tools");
  if (!arguments.extra_context.empty()) options.extra_context_json = arguments.extra_context;
  std::optional<std::string> name;
  if (!arguments.template_name.empty()) name = arguments.template_name;
  const std::string messages = ReadWholeFile(arguments.messages_file, "messages");
  absl::StatusOr<std::string> rendered = model->Render(messages, options, name);
  if (!rendered.ok()) throw CommandFailed(1, std::string(rendered.status().message()));
  if (arguments.repeat > 1) {
    // For tools/bench: parse the template once, then time renders (messages JSON parsing included).
    absl::StatusOr<std::string> source = model->Select(name, options.tools_json.has_value());
    absl::StatusOr<chat_template::ChatTemplate> parsed = chat_template::ChatTemplate::Parse(*source);
    if (!parsed.ok()) throw CommandFailed(1, std::string(parsed.status().message()));
    chat_template::ChatTemplateOptions timed = options;
    timed.special_tokens = model->special_tokens;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < arguments.repeat; ++i) {
      absl::StatusOr<std::string> again = parsed->Render(messages, timed);
      if (!again.ok() || *again != *rendered) throw CommandFailed(1, "chat-template --repeat: a repeated render differs");
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "{\"renders\": %d, \"seconds\": %.6f, \"microseconds_per_render\": %.3f}\n", arguments.repeat, seconds,
                 seconds * 1e6 / arguments.repeat);
  }
  std::fwrite(rendered->data(), 1, rendered->size(), stdout);
  std::fflush(stdout);
}

}  // namespace

void AddChatTemplateCommands(CLI::App& app) {
  auto arguments = std::make_shared<ChatTemplateArguments>();
  CLI::App* command = app.add_subcommand("chat-template", "Render a model's chat template for a conversation (as apply_chat_template).");
  command->add_option("model", arguments->model_directory,
                      "Model folder (tokenizer_config.json or chat_template.jinja), or namespace/name[@revision]")->required();
  AddModelSourceFlags(command, arguments->model_source);
  command->add_option("--messages", arguments->messages_file, "JSON file with the list of messages")->required();
  command->add_flag("--add-generation-prompt", arguments->add_generation_prompt, "End with the assistant turn's header");
  command->add_option("--tools", arguments->tools_file, "JSON file with a list of tool schemas");
  command->add_option("--template-name", arguments->template_name, "Pick a named template (tool_use, rag, ...)");
  command->add_option("--extra-context", arguments->extra_context, "JSON object of extra template variables");
  command->add_option("--repeat", arguments->repeat, "Render N times and print the timing as JSON on stderr (benchmarks)")
      ->check(CLI::Range(1, 100000000));
  command->callback([arguments]() { RunChatTemplate(*arguments); });
}

}  // namespace flotilla::cli
