// forward, generate: run a model from a folder (or, once the registry client is linked, a registry
// reference) on token ids, the way transformers' model(...) and model.generate(...) do.
//
//   flotilla forward ./smollm2 --input-ids "1,2,3;4,5" --output out.safetensors --debug-json debug.json
//   flotilla generate ./smollm2 --prompt-ids 1,2,3 --max-new-tokens 16      # {"ids": [...]}
//   flotilla forward ./clip --pixel-values pixels.safetensors --input-ids "0,5,6,2;0,7,2" \
//       --padding-side right --output out.safetensors    # vision models: a `pixel_values` tensor
//   flotilla forward ./clip --image cat.jpg --input-ids ... # pixels by the folder's preprocessor_config.json
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "models/auto.h"
#include "models/debugger.h"
#include "models/generation.h"
#include "models/safetensors.h"
#include "tools/cli/commands.h"
#ifdef FLOTILLA_WITH_IMAGE_COMMANDS
#include "services/preprocess/image/image_processor.h"
#endif

namespace flotilla::cli {
namespace {

struct ModelFlags {
  std::string model;
  std::string attention;
  std::string dtype = "float32";
};

void AddModelFlags(CLI::App* command, ModelFlags& flags) {
  command->add_option("model", flags.model, "model folder (config.json + safetensors) or namespace/name@revision")
      ->required();
  command->add_option("--attention", flags.attention, "attention implementation: eager, sdpa (default: config's)");
  command->add_option("--dtype", flags.dtype, "float32 or bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
}

// "1,2,3;4,5" -> rows of ids.
std::vector<std::vector<int64_t>> ParseIdRows(const std::string& text, const char* flag) {
  std::vector<std::vector<int64_t>> rows;
  for (absl::string_view row : absl::StrSplit(text, ';')) {
    std::vector<int64_t> ids;
    for (absl::string_view item : absl::StrSplit(row, ',', absl::SkipWhitespace())) {
      int64_t id = 0;
      if (!absl::SimpleAtoi(item, &id)) {
        throw CommandFailed(2, absl::StrCat(flag, ": \"", item, "\" is not an integer token id"));
      }
      ids.push_back(id);
    }
    if (ids.empty()) throw CommandFailed(2, absl::StrCat(flag, ": empty sequence in \"", text, "\""));
    rows.push_back(std::move(ids));
  }
  return rows;
}

// Pads a ragged batch on the left (as decoder tokenizers do for generation) with the pad id and
// returns (input_ids, attention_mask or nullopt when no row is padded).
std::pair<at::Tensor, std::optional<at::Tensor>> PadLeft(const std::vector<std::vector<int64_t>>& rows, int64_t pad_id) {
  size_t length = 0;
  for (const auto& row : rows) length = std::max(length, row.size());
  at::Tensor input_ids = at::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(length)}, pad_id, at::kLong);
  at::Tensor attention_mask = at::zeros_like(input_ids);
  bool padded = false;
  for (size_t index = 0; index < rows.size(); ++index) {
    const auto& row = rows[index];
    const int64_t offset = static_cast<int64_t>(length - row.size());
    padded |= offset > 0;
    input_ids[index].narrow(0, offset, row.size()).copy_(at::tensor(row, at::kLong));
    attention_mask[index].narrow(0, offset, row.size()).fill_(1);
  }
  return {input_ids, padded ? std::optional<at::Tensor>(attention_mask) : std::nullopt};
}

// Vision inputs of `forward`: pixel_values from a safetensors file or images through the model's
// image processor, and text padding on the right (CLIP's tokenizer pads right; EOS pooling and
// the causal mask expect it).
struct VisionFlags {
  std::string pixel_values_path;
  std::vector<std::string> images;
  std::string padding_side = "left";
  bool interpolate_pos_encoding = false;
};

std::pair<at::Tensor, std::optional<at::Tensor>> PadRight(const std::vector<std::vector<int64_t>>& rows,
                                                          int64_t pad_id) {
  size_t length = 0;
  for (const auto& row : rows) length = std::max(length, row.size());
  at::Tensor input_ids = at::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(length)}, pad_id, at::kLong);
  at::Tensor attention_mask = at::zeros_like(input_ids);
  bool padded = false;
  for (size_t index = 0; index < rows.size(); ++index) {
    const auto& row = rows[index];
    padded |= row.size() < length;
    input_ids[index].narrow(0, 0, row.size()).copy_(at::tensor(row, at::kLong));
    attention_mask[index].narrow(0, 0, row.size()).fill_(1);
  }
  return {input_ids, padded ? std::optional<at::Tensor>(attention_mask) : std::nullopt};
}

at::Tensor ReadPixelValues(const VisionFlags& vision, const ModelFlags& flags) {
  if (!vision.pixel_values_path.empty()) {
    auto file = models::SafetensorsFile::Open(vision.pixel_values_path);
    if (!file.ok()) throw CommandFailed(1, absl::StrCat("--pixel-values: ", file.status().message()));
    auto tensor = (*file)->Get("pixel_values");
    if (!tensor.ok()) {
      throw CommandFailed(1, absl::StrCat("--pixel-values ", vision.pixel_values_path,
                                          ": no `pixel_values` tensor: ", tensor.status().message()));
    }
    return tensor->clone();  // the file's mapping goes away with `file`
  }
#ifdef FLOTILLA_WITH_IMAGE_COMMANDS
  auto folder = models::ResolveModelPath(flags.model);
  if (!folder.ok()) throw CommandFailed(1, std::string(folder.status().message()));
  const std::string config_path = *folder + "/preprocessor_config.json";
  auto processor = image::ImageProcessor::FromFile(config_path);
  if (!processor.ok()) throw CommandFailed(1, absl::StrCat("--image: ", processor.status().message()));
  std::vector<std::string> encoded_images;
  for (const std::string& path : vision.images) {
    std::ifstream stream(path, std::ios::binary);
    if (!stream) throw CommandFailed(2, absl::StrCat("--image: cannot read ", path));
    encoded_images.emplace_back((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
  }
  auto processed = processor->ProcessEncoded(encoded_images, torch::kCPU);
  if (!processed.ok()) throw CommandFailed(1, absl::StrCat("--image: ", processed.status().message()));
  return processed->pixel_values;
#else
  throw CommandFailed(2, "--image: this build has no image processor");
#endif
}

std::shared_ptr<models::PreTrainedModel> Load(const ModelFlags& flags) {
  models::LoadOptions options;
  options.attn_implementation = flags.attention;
  options.dtype = flags.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  auto model = models::FromPretrained(flags.model, options);
  if (!model.ok()) throw CommandFailed(1, std::string(model.status().message()));
  return *model;
}

int64_t PadId(const models::PreTrainedModel& model) {
  const auto& config = model.config();
  return config.pad_token_id.value_or(config.eos_token_id.empty() ? 0 : config.eos_token_id[0]);
}

void RunForward(const ModelFlags& flags, const std::string& input_ids_text, const std::string& output_path,
                const std::string& debug_json_path, const VisionFlags& vision) {
  const bool has_pixels = !vision.pixel_values_path.empty() || !vision.images.empty();
  if (input_ids_text.empty() && !has_pixels) {
    throw CommandFailed(2, "forward: give --input-ids, --pixel-values or --image");
  }
  auto rows = input_ids_text.empty() ? std::vector<std::vector<int64_t>>{} : ParseIdRows(input_ids_text, "--input-ids");
  auto model = Load(flags);
  at::Tensor input_ids;
  std::optional<at::Tensor> attention_mask;
  if (!rows.empty()) {
    std::tie(input_ids, attention_mask) =
        vision.padding_side == "right" ? PadRight(rows, PadId(*model)) : PadLeft(rows, PadId(*model));
  }
  models::ForwardInputs inputs;
  inputs.input_ids = input_ids;
  inputs.attention_mask = attention_mask;
  inputs.output_hidden_states = true;
  if (has_pixels) {
    inputs.pixel_values = ReadPixelValues(vision, flags).to(flags.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat);
  }
  inputs.interpolate_pos_encoding = vision.interpolate_pos_encoding;
  models::ModelOutput output;
  nlohmann::json debug_json;
  try {
    if (!debug_json_path.empty()) {
      models::ModelDebugger debugger(*model);
      output = model->Forward(inputs);
      debug_json = debugger.Json();
    } else {
      output = model->Forward(inputs);
    }
  } catch (const c10::Error& error) {
    throw CommandFailed(1, absl::StrCat("forward(", flags.model, "): ", error.what_without_backtrace()));
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  if (output.logits.defined()) tensors.emplace_back("logits", output.logits);
  tensors.emplace_back("last_hidden_state", output.last_hidden_state);
  if (output.pooler_output.defined()) tensors.emplace_back("pooler_output", output.pooler_output);
  for (size_t index = 0; index < output.hidden_states.size(); ++index) {
    tensors.emplace_back(absl::StrCat("hidden_states.", index), output.hidden_states[index]);
  }
  for (const auto& [name, tensor] : output.named_outputs) {
    if (tensor.defined()) tensors.emplace_back(name, tensor);
  }
  if (input_ids.defined()) {
    tensors.emplace_back("input_ids", input_ids);
    tensors.emplace_back("attention_mask", attention_mask.value_or(at::ones_like(input_ids)));
  }
  if (inputs.pixel_values.has_value()) tensors.emplace_back("pixel_values", *inputs.pixel_values);
  auto saved = models::SaveSafetensors(output_path, tensors);
  if (!saved.ok()) throw CommandFailed(1, std::string(saved.message()));
  if (!debug_json_path.empty()) {
    std::ofstream stream(debug_json_path);
    stream << debug_json.dump(1) << "\n";
    if (!stream) throw CommandFailed(1, absl::StrCat("--debug-json: cannot write ", debug_json_path));
  }
}

void RunGenerate(const ModelFlags& flags, const std::string& prompt_ids_text, int64_t max_new_tokens, bool no_eos) {
  auto rows = ParseIdRows(prompt_ids_text, "--prompt-ids");
  auto model = Load(flags);
  models::GenerationOptions options;
  options.max_new_tokens = max_new_tokens;
  auto folder = models::ResolveModelPath(flags.model);
  if (folder.ok()) models::ReadGenerationConfig(*folder, options);
  if (no_eos) options.eos_token_id = std::vector<int64_t>{};
  auto [prompt_ids, attention_mask] = PadLeft(rows, PadId(*model));
  absl::StatusOr<at::Tensor> generated;
  try {
    generated = models::GenerateGreedy(*model, prompt_ids, attention_mask, options);
  } catch (const c10::Error& error) {
    throw CommandFailed(1, absl::StrCat("generate(", flags.model, "): ", error.what_without_backtrace()));
  }
  if (!generated.ok()) throw CommandFailed(1, std::string(generated.status().message()));
  nlohmann::json ids = nlohmann::json::array();
  for (int64_t row = 0; row < generated->size(0); ++row) {
    at::Tensor tokens = (*generated)[row].contiguous();
    std::vector<int64_t> values(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + tokens.numel());
    // A finished row is padded after its EOS; print only up to and including the EOS.
    const auto& eos = options.eos_token_id.value_or(model->config().eos_token_id);
    for (size_t i = 0; i < values.size(); ++i) {
      if (std::find(eos.begin(), eos.end(), values[i]) != eos.end()) {
        values.resize(i + 1);
        break;
      }
    }
    ids.push_back(values);
  }
  nlohmann::json result = {{"ids", rows.size() == 1 ? ids[0] : ids}};
  std::printf("%s\n", result.dump().c_str());
}

}  // namespace

void AddModelCommands(CLI::App& app) {
  {
    auto* command = app.add_subcommand("forward", "Run a model on token ids; write logits and hidden states.");
    auto flags = std::make_shared<ModelFlags>();
    auto input_ids = std::make_shared<std::string>();
    auto output = std::make_shared<std::string>();
    auto debug_json = std::make_shared<std::string>();
    AddModelFlags(command, *flags);
    command->add_option("--input-ids", *input_ids, "comma-separated ids; ';' separates batch rows (padded left)");
    auto vision = std::make_shared<VisionFlags>();
    auto* pixel_values = command->add_option("--pixel-values", vision->pixel_values_path,
                                             "safetensors file holding a `pixel_values` tensor [batch, 3, H, W]");
    command->add_option("--image", vision->images, "image file(s), processed by the model's preprocessor_config.json")
        ->excludes(pixel_values);
    command->add_option("--padding-side", vision->padding_side, "where ragged --input-ids rows are padded")
        ->check(CLI::IsMember({"left", "right"}));
    command->add_flag("--interpolate-pos-encoding", vision->interpolate_pos_encoding,
                      "vision models: resize position embeddings for other image sizes");
    command->add_option("--output", *output, "safetensors file for logits, hidden_states.<i>")->required();
    command->add_option("--debug-json", *debug_json, "record every submodule's inputs/outputs to this JSON file");
    command->callback([=] { RunForward(*flags, *input_ids, *output, *debug_json, *vision); });
  }
  {
    auto* command = app.add_subcommand("generate", "Greedy generation with a KV cache; prints {\"ids\": [...]}.");
    auto flags = std::make_shared<ModelFlags>();
    auto prompt_ids = std::make_shared<std::string>();
    auto max_new_tokens = std::make_shared<int64_t>(20);
    auto no_eos = std::make_shared<bool>(false);
    AddModelFlags(command, *flags);
    command->add_option("--prompt-ids", *prompt_ids, "comma-separated ids; ';' separates batch rows")->required();
    command->add_option("--max-new-tokens", *max_new_tokens, "at most this many new tokens")->check(CLI::PositiveNumber);
    command->add_flag("--ignore-eos", *no_eos, "do not stop at the config's EOS ids");
    command->callback([=] { RunGenerate(*flags, *prompt_ids, *max_new_tokens, *no_eos); });
  }
}

}  // namespace flotilla::cli
