// forward, generate, embed, save-pretrained: run a model from a folder or a registry reference on
// token ids or text, the way transformers' model(...) and model.generate(...) do, or on texts the
// way sentence-transformers' encode does.
//
//   flotilla forward ./smollm2 --input-ids "1,2,3;4,5" --output out.safetensors --debug-json debug.json
//   flotilla forward ./bert --input-ids "101,7,102;101,102" --token-type-ids "0,0,1;0,0" --padding-side right ...
//   flotilla generate ./smollm2 --prompt-ids 1,2,3 --max-new-tokens 16      # {"ids": [...]}
//   flotilla embed ./all-MiniLM-L6-v2 --text "A sentence" --text "Another"   # {"embeddings": [[...], ...]}
//   flotilla embed ./clip --image cat.jpg --text "a photo of a cat" --text "a dog"  # embeds + logits_per_image
//   flotilla generate acme/smollm2@main --chat --prompt "What is 2+2?"     # {"ids": [...], "text": "..."}
//
// A registry reference is pulled once per commit into the model cache ($FLOTILLA_CACHE, else
// <data dir>/cache) through the registry client; the registry's address is found as for `pull`.
//   flotilla forward ./clip --pixel-values pixels.safetensors --input-ids "0,5,6,2;0,7,2" \
//       --padding-side right --output out.safetensors    # vision models: a `pixel_values` tensor
//   flotilla forward ./clip --image cat.jpg --input-ids ... # pixels by the folder's preprocessor_config.json
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
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
#include "models/config.h"
#include "models/debugger.h"
#include "models/generation.h"
#include "models/kernelize.h"
#include "models/pooling.h"
#include "models/safetensors.h"
#include "services/preprocess/chat_template/chat_template.h"
#include "services/preprocess/image/image_processor.h"
#include "services/preprocess/tokenizer/tokenizer.h"
#include "services/preprocess/tokenizer/tokenizer_settings.h"
#include "services/registry/registry_client.h"
#include "tools/cli/commands.h"
#include "tools/cli/torch_commands.h"

namespace flotilla::cli {
namespace {

struct ModelFlags {
  std::string model;
  std::string attention;
  std::string architecture;
  std::string dtype = "float32";
  std::string registry;
  std::string data_directory = DefaultDataDirectory();
  // Tensor parallelism: run this process as one rank of a group (start one process per rank, as
  // with torchrun; rank 0 hosts the rendezvous store and writes the outputs).
  int tensor_parallel_size = 1;
  int rank = 0;
  std::string master_address = "127.0.0.1";
  int master_port = 29500;
  std::string tp_plan;
  std::string kernels;  // the worker's --kernels mapping (eager / builtin per layer name); "" = eager
};

void AddModelFlags(CLI::App* command, ModelFlags& flags) {
  command->add_option("model", flags.model, "model folder (config.json + safetensors) or namespace/name@revision")
      ->required();
  command->add_option("--attention", flags.attention, "attention implementation: eager, sdpa (default: config's)");
  command->add_option("--architecture", flags.architecture,
                      "load as this registered class instead of config.json's architectures[0] "
                      "(e.g. CLIPVisionModel from a CLIPModel folder, BertModel from a BertForMaskedLM one)");
  command->add_option("--dtype", flags.dtype, "float32 or bfloat16")->check(CLI::IsMember({"float32", "bfloat16"}));
  command->add_option("--registry", flags.registry,
                      "registry gRPC address for references (default $FLOTILLA_REGISTRY, else the local mesh's)");
  command->add_option("--data-dir", flags.data_directory, "the local mesh's data directory");
  command->add_option("--tensor-parallel-size", flags.tensor_parallel_size,
                      "ranks sharing the model (start one process per rank with --rank)")
      ->check(CLI::PositiveNumber);
  command->add_option("--rank", flags.rank, "this process's rank (rank 0 hosts the store and writes the outputs)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--master-address", flags.master_address, "rank 0's address (as torchrun's MASTER_ADDR)");
  command->add_option("--master-port", flags.master_port, "rank 0's store port (as MASTER_PORT)");
  command->add_option("--tp-plan", flags.tp_plan, "a JSON tensor-parallel plan overriding the model's");
  command->add_option("--kernels", flags.kernels,
                      "layer kernels as the worker's flag, e.g. RMSNorm=builtin,SiluAndMul=builtin,"
                      "RotaryEmbedding=builtin,Linear=builtin (default: eager)");
}

// The local folder of flags.model: itself when it is a folder, else the registry reference pulled
// into the model cache (see LocalModelFolder). Installed as the models library's resolver too, so
// models::FromPretrained takes references.
std::string ModelFolder(const ModelFlags& flags) {
  models::SetModelReferenceResolver([flags](const std::string& reference) -> absl::StatusOr<std::string> {
    try {
      return LocalModelFolder(reference, flags.registry, flags.data_directory, /*weights=*/true);
    } catch (const CommandFailed& failed) {
      return absl::UnavailableError(failed.what());
    }
  });
  absl::StatusOr<std::string> folder = models::ResolveModelPath(flags.model);
  if (!folder.ok()) throw CommandFailed(1, std::string(folder.status().message()));
  return *folder;
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

enum class PaddingSide { kLeft, kRight };

// Pads a ragged batch with the pad id, on the left (as decoder tokenizers do for generation) or the
// right (encoders, CLIP), and returns (input_ids, attention_mask or nullopt when no row is padded).
std::pair<at::Tensor, std::optional<at::Tensor>> Pad(const std::vector<std::vector<int64_t>>& rows, int64_t pad_id,
                                                     PaddingSide side) {
  size_t length = 0;
  for (const auto& row : rows) length = std::max(length, row.size());
  at::Tensor input_ids = at::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(length)}, pad_id, at::kLong);
  at::Tensor attention_mask = at::zeros_like(input_ids);
  bool padded = false;
  for (size_t index = 0; index < rows.size(); ++index) {
    const auto& row = rows[index];
    padded |= row.size() < length;
    const int64_t offset = side == PaddingSide::kLeft ? static_cast<int64_t>(length - row.size()) : 0;
    input_ids[index].narrow(0, offset, row.size()).copy_(at::tensor(row, at::kLong));
    attention_mask[index].narrow(0, offset, row.size()).fill_(1);
  }
  return {input_ids, padded ? std::optional<at::Tensor>(attention_mask) : std::nullopt};
}

// Inputs of `forward` beyond token ids: pixel_values from a safetensors file or images through the
// model's image processor, and the side ragged text rows are padded on (left for decoders; right
// for encoders and CLIP, whose tokenizers pad right and whose EOS pooling expects it).
struct VisionFlags {
  std::string pixel_values_path;
  std::vector<std::string> images;
  std::string padding_side = "left";
  bool interpolate_pos_encoding = false;
};

// Throws unless every path is a readable file, so a typo fails before a model is loaded.
void CheckImageFiles(const std::vector<std::string>& paths) {
  for (const std::string& path : paths) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) {
      throw CommandFailed(2, absl::StrCat("--image: cannot read \"", path, "\": ",
                                          std::filesystem::exists(path, error) ? "not a file" : "no such file"));
    }
  }
}

// pixel_values for image files by the folder's image processor (ImageProcessor::FromDirectory).
at::Tensor ProcessImages(const std::vector<std::string>& paths, const std::string& folder) {
  absl::StatusOr<image::ImageProcessor> processor = image::ImageProcessor::FromDirectory(folder);
  if (!processor.ok()) throw CommandFailed(1, absl::StrCat("--image: ", processor.status().message()));
  std::vector<std::string> encoded_images;
  for (const std::string& path : paths) {
    std::ifstream stream(path, std::ios::binary);
    if (!stream) throw CommandFailed(2, absl::StrCat("--image: cannot read ", path));
    encoded_images.emplace_back((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
  }
  auto processed = processor->ProcessEncoded(encoded_images, torch::kCPU);
  if (!processed.ok()) throw CommandFailed(1, absl::StrCat("--image: ", processed.status().message()));
  return processed->pixel_values;
}

at::Tensor ReadPixelValues(const VisionFlags& vision, const std::string& folder) {
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
  return ProcessImages(vision.images, folder);
}

std::shared_ptr<models::PreTrainedModel> Load(const ModelFlags& flags, const std::string& folder) {
  if (!flags.kernels.empty()) {
    // The same layers the worker would run, so a comparison with transformers covers them.
    absl::StatusOr<models::LayerKernels> kernels = models::ResolveLayerKernels(flags.kernels);
    if (!kernels.ok()) throw CommandFailed(2, absl::StrCat("--kernels: ", kernels.status().message()));
    models::InstallLayerKernels(*kernels);
  }
  models::LoadOptions options;
  options.attn_implementation = flags.attention;
  options.architecture = flags.architecture;
  options.dtype = flags.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  if (flags.tensor_parallel_size > 1) {
    if (flags.rank >= flags.tensor_parallel_size) {
      throw CommandFailed(2, absl::StrCat("--rank ", flags.rank, " is outside --tensor-parallel-size ",
                                          flags.tensor_parallel_size));
    }
    if (!flags.tp_plan.empty()) {
      std::ifstream file(flags.tp_plan);
      options.tensor_parallel_plan = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
      if (!file || options.tensor_parallel_plan.is_discarded()) {
        throw CommandFailed(2, absl::StrCat("--tp-plan ", flags.tp_plan, ": not a readable JSON file"));
      }
    }
    auto group = models::TensorParallelGroup::Join({.rank = flags.rank, .world_size = flags.tensor_parallel_size,
                                                    .master_address = flags.master_address,
                                                    .master_port = flags.master_port,
                                                    .timeout = absl::Seconds(60)});
    if (!group.ok()) throw CommandFailed(1, std::string(group.status().message()));
    options.tensor_parallel_group = *group;
  }
  auto model = models::FromPretrained(folder, options);
  if (!model.ok()) throw CommandFailed(1, std::string(model.status().message()));
  return *model;
}

int64_t PadId(const models::PreTrainedModel& model) {
  const auto& config = model.config();
  return config.pad_token_id.value_or(config.eos_token_id.empty() ? 0 : config.eos_token_id[0]);
}

void RunForward(const ModelFlags& flags, const std::string& input_ids_text, const std::string& output_path,
                const std::string& debug_json_path, const std::string& token_type_ids_text,
                const VisionFlags& vision) {
  const bool has_pixels = !vision.pixel_values_path.empty() || !vision.images.empty();
  if (input_ids_text.empty() && !has_pixels) {
    throw CommandFailed(2, "forward: give --input-ids, --pixel-values or --image");
  }
  auto rows = input_ids_text.empty() ? std::vector<std::vector<int64_t>>{} : ParseIdRows(input_ids_text, "--input-ids");
  std::vector<std::vector<int64_t>> token_type_rows;
  if (!token_type_ids_text.empty()) {
    token_type_rows = ParseIdRows(token_type_ids_text, "--token-type-ids");
    bool same_shape = token_type_rows.size() == rows.size();
    for (size_t index = 0; same_shape && index < rows.size(); ++index) {
      same_shape = token_type_rows[index].size() == rows[index].size();
    }
    if (!same_shape) throw CommandFailed(2, "--token-type-ids: expected one type id per --input-ids id, row by row");
  }
  const std::string folder = ModelFolder(flags);
  auto model = Load(flags, folder);
  const PaddingSide side = vision.padding_side == "right" ? PaddingSide::kRight : PaddingSide::kLeft;
  at::Tensor input_ids;
  std::optional<at::Tensor> attention_mask;
  if (!rows.empty()) std::tie(input_ids, attention_mask) = Pad(rows, PadId(*model), side);
  models::ForwardInputs inputs;
  inputs.input_ids = input_ids;
  inputs.attention_mask = attention_mask;
  if (!token_type_rows.empty()) inputs.token_type_ids = Pad(token_type_rows, 0, side).first;
  inputs.output_hidden_states = true;
  if (has_pixels) {
    inputs.pixel_values = ReadPixelValues(vision, folder).to(flags.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat);
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
  if (flags.rank != 0) return;  // rank 0 writes what every rank computed
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

struct PromptFlags {
  std::string prompt_ids;
  std::vector<std::string> prompts;
  bool chat = false;
  std::string system;
};

std::unique_ptr<tokenizer::Tokenizer> LoadTokenizer(const std::string& folder) {
  auto loaded = tokenizer::Tokenizer::FromDirectory(folder);
  if (!loaded.ok()) throw CommandFailed(1, absl::StrCat("generate --prompt: ", loaded.status().message()));
  return std::move(*loaded);
}

// Text prompts to ids as transformers does: `tokenizer(prompt)` adds the post-processor's special
// tokens; `apply_chat_template(messages, add_generation_prompt=True, tokenize=True)` renders the
// template (which writes its own special tokens) and encodes without adding any.
std::vector<std::vector<int64_t>> EncodePrompts(const PromptFlags& prompt, const std::string& folder,
                                                const tokenizer::Tokenizer& tokenizer) {
  std::optional<chat_template::ModelChatTemplate> chat;
  if (prompt.chat) {
    auto loaded = chat_template::LoadChatTemplate(folder);
    if (!loaded.ok()) throw CommandFailed(1, absl::StrCat("generate --chat: ", loaded.status().message()));
    chat = std::move(*loaded);
  }
  std::vector<std::vector<int64_t>> rows;
  for (const std::string& text : prompt.prompts) {
    std::string to_encode = text;
    tokenizer::EncodeOptions options;
    if (chat) {
      nlohmann::json messages = nlohmann::json::array();
      if (!prompt.system.empty()) messages.push_back({{"role", "system"}, {"content", prompt.system}});
      messages.push_back({{"role", "user"}, {"content", text}});
      chat_template::ChatTemplateOptions render_options;
      render_options.add_generation_prompt = true;
      auto rendered = chat->Render(messages.dump(), render_options);
      if (!rendered.ok()) throw CommandFailed(1, absl::StrCat("generate --chat: ", rendered.status().message()));
      to_encode = std::move(*rendered);
      options.add_special_tokens = false;
    }
    auto encoding = tokenizer.Encode(to_encode, options);
    if (!encoding.ok()) throw CommandFailed(1, absl::StrCat("generate --prompt: ", encoding.status().message()));
    if (encoding->ids.empty()) throw CommandFailed(2, absl::StrCat("generate --prompt: \"", text, "\" encodes to no tokens"));
    rows.emplace_back(encoding->ids.begin(), encoding->ids.end());
  }
  return rows;
}

void RunGenerate(const ModelFlags& flags, const PromptFlags& prompt, int64_t max_new_tokens, bool no_eos) {
  if (prompt.prompt_ids.empty() == prompt.prompts.empty()) {
    throw CommandFailed(2, "generate: give either --prompt-ids or --prompt");
  }
  if (prompt.chat && prompt.prompts.empty()) throw CommandFailed(2, "generate: --chat needs --prompt text");
  const std::string folder = ModelFolder(flags);
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::vector<std::vector<int64_t>> rows;
  if (prompt.prompts.empty()) {
    rows = ParseIdRows(prompt.prompt_ids, "--prompt-ids");
  } else {
    tokenizer = LoadTokenizer(folder);
    rows = EncodePrompts(prompt, folder, *tokenizer);
  }
  auto model = Load(flags, folder);
  models::GenerationOptions options;
  options.max_new_tokens = max_new_tokens;
  // generation_config.json's stop and pad ids (else config.json's), read as transformers'
  // GenerationConfig does: the one reader the gateway uses too.
  absl::StatusOr<tokenizer::GenerationDefaults> defaults = tokenizer::LoadGenerationDefaults(folder);
  if (!defaults.ok()) throw CommandFailed(1, absl::StrCat("generate(", flags.model, "): ", defaults.status().message()));
  if (!defaults->eos_token_ids.empty()) options.eos_token_id = defaults->eos_token_ids;
  if (defaults->pad_token_id.has_value()) options.pad_token_id = defaults->pad_token_id;
  if (no_eos) options.eos_token_id = std::vector<int64_t>{};
  auto [prompt_ids, attention_mask] = Pad(rows, PadId(*model), PaddingSide::kLeft);
  absl::StatusOr<at::Tensor> generated;
  try {
    generated = models::GenerateGreedy(*model, prompt_ids, attention_mask, options);
  } catch (const c10::Error& error) {
    throw CommandFailed(1, absl::StrCat("generate(", flags.model, "): ", error.what_without_backtrace()));
  }
  if (!generated.ok()) throw CommandFailed(1, std::string(generated.status().message()));
  nlohmann::json ids = nlohmann::json::array();
  nlohmann::json texts = nlohmann::json::array();
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
    if (tokenizer) {
      // As tokenizer.decode(new_ids, skip_special_tokens=True).
      std::vector<uint32_t> unsigned_ids(values.begin(), values.end());
      auto text = tokenizer->Decode(unsigned_ids, /*skip_special_tokens=*/true);
      if (!text.ok()) throw CommandFailed(1, absl::StrCat("generate: decoding: ", text.status().message()));
      texts.push_back(*text);
    }
    ids.push_back(values);
  }
  const bool single = rows.size() == 1;
  nlohmann::json result = {{"ids", single ? ids[0] : ids}};
  if (tokenizer) result["text"] = single ? texts[0] : texts;
  std::printf("%s\n", result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

// As model.save_pretrained(output): config.json (with the stored dtype) and model.safetensors (tied
// weights once); generation_config.json and the tokenizer and processor files are copied along, so
// that the output folder loads again anywhere the input did.
void RunSavePretrained(const ModelFlags& flags, const std::string& output) {
  const std::string folder = ModelFolder(flags);
  std::error_code same_error;
  if (std::filesystem::exists(output) && std::filesystem::equivalent(folder, output, same_error)) {
    throw CommandFailed(2, "save-pretrained: the output folder is the model's own folder; its weights are still mapped");
  }
  auto model = Load(flags, folder);
  if (absl::Status saved = models::SavePretrained(*model, output); !saved.ok()) {
    throw CommandFailed(1, std::string(saved.message()));
  }
  namespace fs = std::filesystem;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    const bool weights = entry.path().extension() == ".safetensors" || name == "model.safetensors.index.json";
    if (!entry.is_regular_file() || weights || name == "config.json") continue;
    std::error_code error;
    fs::copy_file(entry.path(), fs::path(output) / name, fs::copy_options::overwrite_existing, error);
    if (error) throw CommandFailed(1, absl::StrCat("save-pretrained: copying ", name, ": ", error.message()));
  }
  std::printf("%s\n", nlohmann::json({{"output", output}, {"dtype", flags.dtype}}).dump().c_str());
}

struct EmbedFlags {
  std::vector<std::string> texts;
  std::vector<std::string> images;
  bool normalize = false;
};

// [batch, dim] float rows as JSON lists.
nlohmann::json JsonRows(const at::Tensor& tensor) {
  at::Tensor rows_tensor = tensor.to(at::kFloat).contiguous();
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t row = 0; row < rows_tensor.size(0); ++row) {
    const float* values = rows_tensor[row].data_ptr<float>();
    rows.push_back(std::vector<float>(values, values + rows_tensor.size(1)));
  }
  return rows;
}

// What the folder loads as, for messages: --architecture, else config.json's architectures[0].
std::string LoadedArchitecture(const ModelFlags& flags, const models::PreTrainedModel& model) {
  if (!flags.architecture.empty()) return flags.architecture;
  const auto& architectures = model.config().architectures;
  return architectures.empty() ? absl::StrCat("model_type \"", model.config().model_type, "\"") : architectures[0];
}

// sentence-transformers' encode: tokenize (truncating to max_seq_length, no fixed padding),
// pad the batch on the right, run the encoder, pool over the attention mask, normalise.
at::Tensor SentenceTransformerEmbeddings(const ModelFlags& flags, const std::string& folder,
                                         models::PreTrainedModel& model, const std::vector<std::string>& texts) {
  auto loaded_tokenizer = tokenizer::Tokenizer::FromDirectory(folder);
  if (!loaded_tokenizer.ok()) throw CommandFailed(1, absl::StrCat("embed: ", loaded_tokenizer.status().message()));
  tokenizer::Tokenizer& text_tokenizer = **loaded_tokenizer;
  auto pooling = models::ReadSentenceEmbeddingConfig(folder);
  if (!pooling.ok()) throw CommandFailed(1, absl::StrCat("embed: ", pooling.status().message()));
  // As transformers' tokenizer call from sentence-transformers: its max_length replaces the
  // tokenizer.json truncation, and padding is to the longest text, not tokenizer.json's.
  std::optional<tokenizer::TruncationParams> truncation = text_tokenizer.truncation();
  if (pooling->max_seq_length.has_value()) {
    if (!truncation.has_value()) truncation = tokenizer::TruncationParams{};
    truncation->max_length = static_cast<size_t>(*pooling->max_seq_length);
  }
  text_tokenizer.set_truncation(truncation);
  text_tokenizer.set_padding(std::nullopt);
  std::vector<std::vector<int64_t>> id_rows, type_rows;
  for (const std::string& text : texts) {
    auto encoding = text_tokenizer.Encode(text);
    if (!encoding.ok()) throw CommandFailed(1, absl::StrCat("embed: tokenize: ", encoding.status().message()));
    id_rows.emplace_back(encoding->ids.begin(), encoding->ids.end());
    type_rows.emplace_back(encoding->type_ids.begin(), encoding->type_ids.end());
  }
  auto [input_ids, attention_mask] = Pad(id_rows, PadId(model), PaddingSide::kRight);
  models::ForwardInputs inputs;
  inputs.input_ids = input_ids;
  inputs.attention_mask = attention_mask;
  inputs.token_type_ids = Pad(type_rows, 0, PaddingSide::kRight).first;
  try {
    models::ModelOutput output = model.Forward(inputs);
    TORCH_CHECK(output.last_hidden_state.defined(), "the model returns no last_hidden_state");
    return models::SentenceEmbeddings(output.last_hidden_state, attention_mask.value_or(at::ones_like(input_ids)),
                                      *pooling);
  } catch (const c10::Error& error) {
    throw CommandFailed(1, absl::StrCat("embed(", flags.model, "): ", error.what_without_backtrace()));
  }
}

// The ids and attention mask of `tokenizer(texts, padding=True, return_tensors="pt")` in
// transformers: special tokens added, no truncation (the call's default turns tokenizer.json's
// off), padding to the longest text with the pad_token and padding_side transformers reads
// (tokenizer_settings.h: special_tokens_map.json, then tokenizer_config.json; CLIP:
// "<|endoftext|>", right).
std::pair<at::Tensor, std::optional<at::Tensor>> TokenizeLikeTransformers(const std::string& folder,
                                                                         const std::string& architecture,
                                                                         const std::vector<std::string>& texts,
                                                                         int64_t fallback_pad_id) {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(folder) / "tokenizer.json")) {
    throw CommandFailed(1, absl::StrCat("embed --text: ", folder, " (", architecture,
                                        ") has no tokenizer.json; save the checkpoint's tokenizer beside it ",
                                        "(CLIPTokenizer or CLIPProcessor save_pretrained)"));
  }
  auto loaded = tokenizer::Tokenizer::FromDirectory(folder);
  if (!loaded.ok()) throw CommandFailed(1, absl::StrCat("embed --text: ", loaded.status().message()));
  tokenizer::Tokenizer& text_tokenizer = **loaded;
  int64_t pad_id = text_tokenizer.padding().has_value() ? text_tokenizer.padding()->pad_id : fallback_pad_id;
  text_tokenizer.set_truncation(std::nullopt);
  text_tokenizer.set_padding(std::nullopt);
  auto settings = tokenizer::LoadTokenizerSettings(folder, text_tokenizer);
  if (!settings.ok()) throw CommandFailed(1, absl::StrCat("embed --text: ", settings.status().message()));
  // A pad token named by config.json only is not one a transformers tokenizer would pad with.
  const std::optional<tokenizer::SpecialToken>& pad_token = settings->pad_token;
  if (pad_token.has_value() && pad_token->source != "config.json") {
    if (!pad_token->id.has_value()) {
      throw CommandFailed(1, absl::StrCat("embed --text: ", folder, "/", pad_token->source, ": pad_token \"",
                                          pad_token->content, "\" is not in tokenizer.json's vocabulary"));
    }
    pad_id = *pad_token->id;
  }
  const PaddingSide side = settings->pad_left ? PaddingSide::kLeft : PaddingSide::kRight;
  std::vector<std::vector<int64_t>> rows;
  for (const std::string& text : texts) {
    auto encoding = text_tokenizer.Encode(text);
    if (!encoding.ok()) throw CommandFailed(1, absl::StrCat("embed --text: tokenize: ", encoding.status().message()));
    rows.emplace_back(encoding->ids.begin(), encoding->ids.end());
  }
  return Pad(rows, pad_id, side);
}

// CLIP-style joint embeddings: get_text_features / get_image_features, or with texts and images
// on a model that has both, CLIPModel(...)'s normalised embeddings and logits.
nlohmann::json JointEmbeddings(const ModelFlags& flags, const std::string& folder, models::PreTrainedModel& model,
                               const std::string& architecture, const EmbedFlags& embed) {
  const char* const architecture_hint =
      flags.architecture.empty() ? "" : " (chosen by --architecture; drop it to load config.json's class)";
  if (!embed.texts.empty() && !model.EmbedsText()) {
    throw CommandFailed(2, absl::StrCat("embed --text: ", folder, " loads as ", architecture, architecture_hint,
                                        ", a vision-only tower with no text embeddings; pass --image files, or embed "
                                        "text with a CLIPModel or CLIPTextModelWithProjection checkpoint"));
  }
  if (!embed.images.empty() && !model.EmbedsImages()) {
    throw CommandFailed(2, absl::StrCat("embed --image: ", folder, " loads as ", architecture, architecture_hint,
                                        ", a text-only tower with no image embeddings; pass --text, or embed "
                                        "images with a CLIPModel or CLIPVisionModelWithProjection checkpoint"));
  }
  const at::ScalarType dtype = flags.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  models::ForwardInputs inputs;
  if (!embed.texts.empty()) {
    std::tie(inputs.input_ids, inputs.attention_mask) =
        TokenizeLikeTransformers(folder, architecture, embed.texts, PadId(model));
  }
  if (!embed.images.empty()) inputs.pixel_values = ProcessImages(embed.images, folder).to(dtype);
  auto finish = [&](const at::Tensor& embeddings) {
    return embed.normalize ? models::L2Normalize(embeddings.to(at::kFloat)) : embeddings;
  };
  try {
    if (embed.texts.empty()) return {{"embeddings", JsonRows(finish(model.GetImageFeatures(inputs)))}};
    if (embed.images.empty()) return {{"embeddings", JsonRows(finish(model.GetTextFeatures(inputs)))}};
    models::ModelOutput output = model.Forward(inputs);
    for (const char* name : {"text_embeds", "image_embeds", "logits_per_text", "logits_per_image"}) {
      TORCH_CHECK(output.named_outputs.count(name) && output.named_outputs[name].defined(), architecture,
                  " returned no ", name, " for texts and images together");
    }
    return {{"text_embeds", JsonRows(finish(output.named_outputs["text_embeds"]))},
            {"image_embeds", JsonRows(finish(output.named_outputs["image_embeds"]))},
            {"logits_per_text", JsonRows(output.named_outputs["logits_per_text"])},
            {"logits_per_image", JsonRows(output.named_outputs["logits_per_image"])}};
  } catch (const c10::Error& error) {
    throw CommandFailed(1, absl::StrCat("embed(", flags.model, "): ", error.what_without_backtrace()));
  }
}

// Sentence-transformers encoders (pooling from modules.json; a plain transformers text checkpoint
// gets mean pooling, as SentenceTransformer(folder) does) and CLIP checkpoints (the model's
// EmbedsText / EmbedsImages). Prints {"embeddings": [[...], ...]}, or for CLIP texts and images
// together {"text_embeds", "image_embeds", "logits_per_text", "logits_per_image"}.
void RunEmbed(const ModelFlags& flags, const EmbedFlags& embed) {
  if (embed.texts.empty() && embed.images.empty()) throw CommandFailed(2, "embed: give --text, --image or both");
  CheckImageFiles(embed.images);
  const std::string folder = ModelFolder(flags);
  auto model = Load(flags, folder);
  const std::string architecture = LoadedArchitecture(flags, *model);
  nlohmann::json result;
  if (model->EmbedsText() || model->EmbedsImages()) {
    result = JointEmbeddings(flags, folder, *model, architecture, embed);
  } else {
    namespace fs = std::filesystem;
    if (!embed.images.empty()) {
      throw CommandFailed(2, absl::StrCat("embed --image: ", folder, " loads as ", architecture,
                                          ", which has no image embeddings; embed images with a CLIP checkpoint ",
                                          "(CLIPModel, CLIPVisionModelWithProjection), or run `flotilla forward ",
                                          "--image` for this model's outputs"));
    }
    if (!fs::exists(fs::path(folder) / "modules.json") && !fs::exists(fs::path(folder) / "tokenizer.json")) {
      throw CommandFailed(2, absl::StrCat("embed: ", folder, " loads as ", architecture,
                                          ", which has neither sentence-transformers pooling (modules.json, with a "
                                          "tokenizer.json) nor CLIP embeddings; embed with a sentence-transformers "
                                          "folder or a CLIP checkpoint (CLIPModel, CLIPTextModelWithProjection, "
                                          "CLIPVisionModelWithProjection), or run `flotilla forward` for this "
                                          "model's outputs"));
    }
    at::Tensor embeddings = SentenceTransformerEmbeddings(flags, folder, *model, embed.texts);
    if (embed.normalize) embeddings = models::L2Normalize(embeddings);
    result = {{"embeddings", JsonRows(embeddings)}};
  }
  std::printf("%s\n", result.dump().c_str());
}

}  // namespace

void AddModelCommands(CLI::App& app) {
  {
    auto* command = app.add_subcommand("save-pretrained", TorchCommandDescription("save-pretrained"));
    auto flags = std::make_shared<ModelFlags>();
    auto output = std::make_shared<std::string>();
    AddModelFlags(command, *flags);
    command->add_option("output", *output, "folder to write config.json, model.safetensors and the other files into")
        ->required();
    command->callback([=] { RunSavePretrained(*flags, *output); });
  }
  {
    auto* command = app.add_subcommand("forward", TorchCommandDescription("forward"));
    auto flags = std::make_shared<ModelFlags>();
    auto input_ids = std::make_shared<std::string>();
    auto output = std::make_shared<std::string>();
    auto debug_json = std::make_shared<std::string>();
    auto token_type_ids = std::make_shared<std::string>();
    AddModelFlags(command, *flags);
    command->add_option("--input-ids", *input_ids, "comma-separated ids; ';' separates batch rows (padded left)");
    auto vision = std::make_shared<VisionFlags>();
    auto* pixel_values = command->add_option("--pixel-values", vision->pixel_values_path,
                                             "safetensors file holding a `pixel_values` tensor [batch, 3, H, W]");
    command->add_option("--image", vision->images, "image file(s), processed by the model's image processor (preprocessor_config.json)")
        ->excludes(pixel_values);
    command->add_option("--padding-side", vision->padding_side, "where ragged --input-ids rows are padded")
        ->check(CLI::IsMember({"left", "right"}));
    command->add_flag("--interpolate-pos-encoding", vision->interpolate_pos_encoding,
                      "vision models: resize position embeddings for other image sizes");
    command->add_option("--output", *output, "safetensors file for logits, hidden_states.<i>")->required();
    command->add_option("--debug-json", *debug_json, "record every submodule's inputs/outputs to this JSON file");
    command->add_option("--token-type-ids", *token_type_ids, "encoders: segment ids, laid out as --input-ids");
    command->callback([=] { RunForward(*flags, *input_ids, *output, *debug_json, *token_type_ids, *vision); });
  }
  {
    auto* command = app.add_subcommand("generate", TorchCommandDescription("generate"));
    auto flags = std::make_shared<ModelFlags>();
    auto prompt = std::make_shared<PromptFlags>();
    auto max_new_tokens = std::make_shared<int64_t>(20);
    auto no_eos = std::make_shared<bool>(false);
    AddModelFlags(command, *flags);
    command->add_option("--prompt-ids", prompt->prompt_ids, "comma-separated ids; ';' separates batch rows");
    command->add_option("--prompt", prompt->prompts, "prompt text, encoded with the model's tokenizer (repeat for a batch)");
    command->add_flag("--chat", prompt->chat, "send each --prompt as a user message through the model's chat template");
    command->add_option("--system", prompt->system, "with --chat: a system message before the user message");
    command->add_option("--max-new-tokens", *max_new_tokens, "at most this many new tokens")->check(CLI::PositiveNumber);
    command->add_flag("--ignore-eos", *no_eos, "do not stop at the config's EOS ids");
    command->callback([=] { RunGenerate(*flags, *prompt, *max_new_tokens, *no_eos); });
  }
  {
    auto* command = app.add_subcommand("embed", TorchCommandDescription("embed"));
    auto flags = std::make_shared<ModelFlags>();
    auto embed = std::make_shared<EmbedFlags>();
    AddModelFlags(command, *flags);
    command->add_option("--text", embed->texts, "a text to embed (repeat for a batch)");
    command->add_option("--image", embed->images,
                        "CLIP: an image file to embed (repeat for a batch), processed by the folder's image processor");
    command->add_flag("--normalize", embed->normalize, "L2-normalise each embedding (the logits are unchanged)");
    command->callback([=] { RunEmbed(*flags, *embed); });
  }
}

}  // namespace flotilla::cli
