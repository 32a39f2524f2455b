#include "models/auto.h"

#include <filesystem>
#include <fstream>
#include <algorithm>
#include <map>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/attention.h"
#include "models/layers.h"
#include "models/safetensors.h"
#include "services/common/logging.h"

namespace flotilla::models {
namespace {

struct Registry {
  // model_type -> architectures in registration order.
  std::map<std::string, std::vector<std::pair<std::string, ModelFactory>>> by_model_type;
  std::map<std::string, ModelFactory> by_architecture;
};

Registry& GetRegistry() {
  static auto* registry = new Registry();
  return *registry;
}

ModelReferenceResolver& Resolver() {
  static auto* resolver = new ModelReferenceResolver();
  return *resolver;
}

// Config errors are labelled "config.json: ..." by the model file; name the real path instead.
absl::StatusOr<std::shared_ptr<PreTrainedModel>> WithConfigPath(absl::StatusOr<std::shared_ptr<PreTrainedModel>> model,
                                                                const std::string& config_path) {
  if (model.ok()) return model;
  absl::string_view message = model.status().message();
  if (message.substr(0, 13) == "config.json: ") message.remove_prefix(13);
  return absl::Status(model.status().code(), absl::StrCat(config_path, ": ", message));
}

std::string ShapeText(at::IntArrayRef shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

// Tensor parallelism: the style of every sharded module of `model` (module name -> style; modules
// left out are replicated), decided and checked before any weight is read.
absl::StatusOr<std::map<std::string, ParallelStyle>> ShardedModuleStyles(PreTrainedModel& model,
                                                                        const LoadOptions& options,
                                                                        int64_t world_size) {
  // The class that loads (a config.json may name no architectures), without its namespace.
  std::string architecture = model.name();
  if (const size_t colon = architecture.rfind(':'); colon != std::string::npos) architecture = architecture.substr(colon + 1);
  TensorParallelPlan base_plan;
  TensorParallelPlan top_level_plan;
  top_level_plan.Add("lm_head", ParallelStyle::kColwiseGatherOutput);
  if (!options.tensor_parallel_plan.is_null()) {
    if (!options.tensor_parallel_plan.is_object()) {
      return absl::InvalidArgumentError("the tensor-parallel plan must be a JSON object of module pattern -> style");
    }
    nlohmann::json base_entries = options.tensor_parallel_plan;
    if (base_entries.contains("lm_head")) {
      auto head = TensorParallelPlan::FromJson({{"lm_head", base_entries["lm_head"]}});
      if (!head.ok()) return head.status();
      top_level_plan = *head;
      base_entries.erase("lm_head");
    }
    auto parsed = TensorParallelPlan::FromJson(base_entries);
    if (!parsed.ok()) return parsed.status();
    base_plan = *parsed;
    // The model answers tensor_parallel_plan() with the plan it was sharded by (serving sizes its
    // KV pool by which heads a rank holds).
    model.mutable_config().tp_plan_override = base_entries;
  } else {
    base_plan = model.tensor_parallel_plan();
  }
  if (base_plan.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(architecture, " has no tensor-parallel plan: give config.json a ",
                                                   "base_model_tp_plan or pass a plan file"));
  }

  // The plan splits attention heads across ranks: each rank must get whole heads.
  if (KeyValueHeadShards(base_plan, world_size) == world_size) {
    const nlohmann::json& source = model.config().source;
    auto integer = [&](std::initializer_list<const char*> keys) -> int64_t {
      for (const char* key : keys) {
        if (source.contains(key) && source[key].is_number_integer()) return source[key].get<int64_t>();
      }
      return 0;
    };
    const int64_t heads = integer({"num_attention_heads", "n_head"});
    const int64_t key_value_heads = integer({"num_key_value_heads"}) > 0 ? integer({"num_key_value_heads"}) : heads;
    for (const auto& [what, count] : {std::pair<const char*, int64_t>{"num_attention_heads", heads},
                                      std::pair<const char*, int64_t>{"num_key_value_heads", key_value_heads}}) {
      if (count > 0 && count % world_size != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor-parallel size ", world_size, " does not divide ", architecture, "'s ", what, " (", count,
            "): the plan splits attention heads across ranks, so each rank needs whole heads; use a size that "
            "divides ", what));
      }
    }
  }

  const std::string base_prefix = model.BaseModelPrefix();
  std::map<std::string, ParallelStyle> styles;
  std::set<std::string> matched_patterns;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    const bool in_base = base_prefix.empty() || name.rfind(base_prefix, 0) == 0;
    const std::string relative = in_base ? name.substr(base_prefix.size()) : name;
    const TensorParallelPlan& plan = in_base ? base_plan : top_level_plan;
    std::optional<ParallelStyle> style = plan.Match(relative);
    if (!style) continue;
    for (const auto& [pattern, entry_style] : plan.entries()) {
      if (GlobMatchesModuleName(pattern, relative)) {
        matched_patterns.insert(pattern);
        break;
      }
    }
    if (*style == ParallelStyle::kReplicated) continue;
    torch::nn::Module* module = item.value().get();
    const bool is_embedding = dynamic_cast<EmbeddingImpl*>(module) != nullptr;
    const bool is_projection = dynamic_cast<LinearImpl*>(module) != nullptr || dynamic_cast<Conv1DImpl*>(module) != nullptr;
    if ((is_embedding && *style != ParallelStyle::kVocabParallel) ||
        (is_projection && *style == ParallelStyle::kVocabParallel) || (!is_embedding && !is_projection)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor-parallel plan: ", ParallelStyleName(*style),
                                                     " cannot shard module ", name, " of ", architecture,
                                                     " (a ", module->name(), ")"));
    }
    styles[name] = *style;
  }
  for (const auto& [pattern, style] : base_plan.entries()) {
    if (!matched_patterns.count(pattern)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor-parallel plan entry \"", pattern, "\": \"",
                                                     ParallelStyleName(style), "\" names no module of ", architecture));
    }
  }
  return styles;
}

std::string ModuleOf(const std::string& parameter_name) {
  const size_t dot = parameter_name.rfind('.');
  return dot == std::string::npos ? "" : parameter_name.substr(0, dot);
}

}  // namespace

void RegisterModel(const std::string& model_type, const std::string& architecture, ModelFactory factory) {
  GetRegistry().by_model_type[model_type].emplace_back(architecture, factory);
  GetRegistry().by_architecture[architecture] = std::move(factory);
}

std::vector<std::string> RegisteredModelTypes() {
  std::vector<std::string> types;
  for (const auto& [type, architectures] : GetRegistry().by_model_type) types.push_back(type);
  return types;
}

absl::StatusOr<std::shared_ptr<PreTrainedModel>> ModelFromConfig(const nlohmann::json& config,
                                                                 const std::string& config_path,
                                                                 const std::string& architecture) {
  const Registry& registry = GetRegistry();
  std::string model_type = config.is_object() ? config.value("model_type", std::string()) : std::string();
  auto known = registry.by_model_type.find(model_type);
  if (known == registry.by_model_type.end()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": model_type \"", model_type,
                                                   "\" is not supported (known: ",
                                                   absl::StrJoin(RegisteredModelTypes(), ", "), ")"));
  }
  std::string wanted = architecture;
  const bool registered_for_type =
      std::any_of(known->second.begin(), known->second.end(), [&](const auto& entry) { return entry.first == wanted; });
  if (!wanted.empty() && !registered_for_type) {
    std::vector<std::string> names;
    for (const auto& [name, factory] : known->second) names.push_back(name);
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": architecture \"", wanted,
                                                   "\" is not registered for model_type ", model_type,
                                                   " (known: ", absl::StrJoin(names, ", "), ")"));
  }
  if (wanted.empty() && config.contains("architectures") && config["architectures"].is_array() &&
      !config["architectures"].empty() && config["architectures"][0].is_string()) {
    wanted = config["architectures"][0].get<std::string>();
    if (!registry.by_architecture.count(wanted)) wanted.clear();  // fall back to the model_type's default
  }
  if (!wanted.empty()) {
    auto found = registry.by_architecture.find(wanted);
    if (found == registry.by_architecture.end()) {
      std::vector<std::string> names;
      for (const auto& [name, factory] : known->second) names.push_back(name);
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": architecture \"", wanted, "\" is not registered for ",
                                                     model_type, " (known: ", absl::StrJoin(names, ", "), ")"));
    }
    return WithConfigPath(found->second(config), config_path);
  }
  return WithConfigPath(known->second.front().second(config), config_path);
}

void SetModelReferenceResolver(ModelReferenceResolver resolver) { Resolver() = std::move(resolver); }

absl::StatusOr<std::string> ResolveModelPath(const std::string& path_or_reference) {
  if (std::filesystem::is_directory(path_or_reference)) return path_or_reference;
  static const std::regex kReference(R"(^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$)");
  if (std::regex_match(path_or_reference, kReference) && !std::filesystem::exists(path_or_reference)) {
    if (!Resolver()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "ResolveModelPath(", path_or_reference,
          "): this looks like a registry reference but no registry client is linked into this binary"));
    }
    return Resolver()(path_or_reference);
  }
  return absl::NotFoundError(
      absl::StrCat("ResolveModelPath(", path_or_reference, "): not a folder and not a namespace/name[@revision] reference"));
}

absl::Status LoadWeights(PreTrainedModel& model, const std::string& folder, const LoadOptions& options) {
  auto checkpoint = SafetensorsCheckpoint::Open(folder);
  if (!checkpoint.ok()) return checkpoint.status();
  const at::ScalarType dtype = options.dtype.value_or(at::kFloat);
  const std::string label = (*checkpoint)->files().size() == 1 ? (*checkpoint)->files()[0]->path() : folder;

  auto parameters = model.named_parameters(/*recurse=*/true);
  std::map<std::string, std::string> tied;
  if (model.config().tie_word_embeddings) tied = model.TiedWeights();

  const TensorParallelGroup* group = options.tensor_parallel_group.get();
  const int64_t world_size = group != nullptr ? group->world_size() : 1;
  const int64_t rank = group != nullptr ? group->rank() : 0;
  std::map<std::string, ParallelStyle> module_styles;
  if (world_size > 1) {
    auto styles = ShardedModuleStyles(model, options, world_size);
    if (!styles.ok()) return styles.status();
    module_styles = std::move(*styles);
    // A tied head shares its embedding's rows: it is sharded the same way (vocab_parallel rows are
    // a colwise head's output features) or, with a replicated embedding, replicated too.
    for (const auto& [target, source] : tied) {
      auto target_style = module_styles.find(ModuleOf(target));
      if (target_style == module_styles.end()) continue;
      auto source_style = module_styles.find(ModuleOf(source));
      if (source_style == module_styles.end()) {
        module_styles.erase(target_style);
      } else if (source_style->second != ParallelStyle::kVocabParallel ||
                 (target_style->second != ParallelStyle::kColwise &&
                  target_style->second != ParallelStyle::kColwiseGatherOutput)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor-parallel plan: ", target, " is tied to ", source,
                                                       " but they are sharded differently (",
                                                       ParallelStyleName(target_style->second), " vs ",
                                                       ParallelStyleName(source_style->second), ")"));
      }
    }
  }
  auto style_of = [&](const std::string& parameter_name) -> std::optional<ParallelStyle> {
    auto found = module_styles.find(ModuleOf(parameter_name));
    if (found == module_styles.end()) return std::nullopt;
    return found->second;
  };

  // Pass 1: check names and shapes, and size the one allocation for the weights that need a copy.
  struct Plan {
    at::Tensor parameter;
    const SafetensorsTensorInfo* info = nullptr;
    SafetensorsFile* file = nullptr;
    bool copy = false;
    int64_t offset = 0;  // bytes into the arena
    std::optional<ParallelStyle> style;  // sharded under tensor parallelism
    std::vector<int64_t> shape;         // this rank's shape
  };
  std::vector<std::pair<std::string, Plan>> plans;
  std::vector<std::string> missing;
  std::set<std::string> used_keys;
  int64_t arena_bytes = 0;
  const int64_t element_size = static_cast<int64_t>(c10::elementSize(dtype));
  for (const auto& item : parameters) {
    const std::string& name = item.key();
    if (tied.count(name)) continue;
    // A bare model (LlamaModel) loads from a head's checkpoint by its base-model prefix, as transformers does.
    std::string key = name;
    const std::string base_prefix = model.CheckpointBasePrefix();
    if (!(*checkpoint)->Contains(key) && (*checkpoint)->Contains(base_prefix + name)) key = base_prefix + name;
    // A head loads a bare model's checkpoint (the original gpt2 files have no "transformer." prefix).
    if (!(*checkpoint)->Contains(key) && name.rfind(base_prefix, 0) == 0 &&
        (*checkpoint)->Contains(name.substr(base_prefix.size()))) {
      key = name.substr(base_prefix.size());
    }
    auto located = (*checkpoint)->Locate(key);
    if (!located.ok()) {
      missing.push_back(name);
      continue;
    }
    Plan plan;
    plan.parameter = item.value();
    plan.file = located->first;
    plan.info = located->second;
    if (plan.info->shape != plan.parameter.sizes().vec()) {
      return absl::InvalidArgumentError(absl::StrCat("LoadWeights(", plan.file->path(), "): tensor ", key,
                                                     ": expected shape ", ShapeText(plan.parameter.sizes()),
                                                     " but got ", ShapeText(plan.info->shape)));
    }
    auto stored_dtype = SafetensorsDtypeToScalarType(plan.info->dtype);
    if (!stored_dtype.ok()) return stored_dtype.status();
    const bool aligned = reinterpret_cast<uintptr_t>(plan.file->Data(*plan.info)) % element_size == 0;
    // A rank of a group copies even its replicated weights, so that the mapping of the whole
    // checkpoint is released when the load returns.
    plan.copy = !(options.zero_copy && *stored_dtype == dtype && aligned && world_size == 1);
    plan.style = style_of(name);
    plan.shape = plan.parameter.sizes().vec();
    if (plan.style) {
      // The shard's shape, from a tensor without storage: sizes the world size does not divide
      // fail here, naming the tensor, before any memory is used.
      at::Tensor layout = at::empty(plan.info->shape, at::TensorOptions().dtype(dtype).device(at::kMeta));
      auto shard = ShardParameter(layout, key, *plan.style, rank, world_size);
      if (!shard.ok()) return shard.status();
      plan.shape = shard->sizes().vec();
    }
    if (plan.copy) {
      plan.offset = arena_bytes;
      int64_t numel = 1;
      for (int64_t size : plan.shape) numel *= size;
      // 64-byte aligned slots, for vectorised kernels.
      arena_bytes += (numel * element_size + 63) / 64 * 64;
    }
    used_keys.insert(key);
    plans.emplace_back(key, std::move(plan));
  }
  // A bare model from a head's checkpoint that never had one of its optional submodules (BertModel
  // or ViTModel from ForMaskedLM / ForImageClassification: no pooler). transformers initialises it
  // randomly; the model drops it instead, so no output depends on random weights.
  if (!missing.empty()) {
    std::map<std::string, std::vector<std::string>> missing_by_module;
    for (const std::string& name : missing) missing_by_module[name.substr(0, name.find('.'))].push_back(name);
    std::set<std::string> dropped;
    for (const auto& [module_name, names] : missing_by_module) {
      size_t module_parameters = 0;
      for (const auto& item : parameters) module_parameters += item.key().rfind(module_name + ".", 0) == 0;
      if (names.size() != module_parameters || !model.DropMissingModule(module_name)) continue;
      dropped.insert(module_name);
      LogWarning("the checkpoint has no weights for an optional submodule; the model is built without it",
                 {{"checkpoint", label}, {"module", module_name}});
    }
    std::erase_if(missing, [&](const std::string& name) { return dropped.count(name.substr(0, name.find('.'))) > 0; });
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("LoadWeights(", label, "): the checkpoint lacks ", missing.size(),
                                                   " tensor(s) the model needs: ", absl::StrJoin(missing, ", ")));
  }
  std::vector<std::string> unexpected;
  for (const std::string& name : (*checkpoint)->TensorNames()) {
    if (!used_keys.count(name)) unexpected.push_back(name);
  }
  if (!unexpected.empty()) {
    LogWarning("checkpoint has tensors the model does not use; they are ignored",
               {{"checkpoint", label}, {"tensors", unexpected}});
  }

  // Pass 2: one allocation (the analogue of transformers' caching_allocator_warmup), then copies.
  // On 2 MiB pages where the kernel gives them: --dtype bfloat16 and tensor-parallel shards decode
  // from here (Note [Weights on huge pages] in safetensors.cc).
  at::Tensor arena = EmptyBytesOnHugePages(arena_bytes);
  for (auto& [name, plan] : plans) {
    auto stored = plan.file->Get(name);
    if (!stored.ok()) return stored.status();
    if (!plan.copy) {
      plan.parameter.set_data(*stored);
      continue;
    }
    at::Tensor source = *stored;
    if (plan.style) {
      auto shard = ShardParameter(*stored, name, *plan.style, rank, world_size);
      if (!shard.ok()) return shard.status();
      source = *shard;
    }
    at::Tensor slot = arena.narrow(0, plan.offset, source.numel() * element_size).view(dtype).view(plan.shape);
    slot.copy_(source);
    plan.parameter.set_data(slot);
  }
  for (const auto& [target, source] : tied) {
    if (!parameters.contains(target) || !parameters.contains(source)) continue;
    parameters[target].set_data(parameters[source]);
  }
  // Each sharded layer runs its style's collective around its local arithmetic.
  if (world_size > 1) {
    for (const auto& item : model.named_modules("", /*include_self=*/false)) {
      auto style = module_styles.find(item.key());
      if (style == module_styles.end()) continue;
      auto layer = std::make_shared<const TensorParallelLayer>(style->second, options.tensor_parallel_group);
      torch::nn::Module* module = item.value().get();
      if (auto* linear = dynamic_cast<LinearImpl*>(module)) linear->tensor_parallel = layer;
      if (auto* embedding = dynamic_cast<EmbeddingImpl*>(module)) embedding->tensor_parallel = layer;
      if (auto* conv1d = dynamic_cast<Conv1DImpl*>(module)) conv1d->tensor_parallel = layer;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromPretrained(const std::string& path_or_reference,
                                                                const LoadOptions& options) {
  auto folder = ResolveModelPath(path_or_reference);
  if (!folder.ok()) return folder.status();
  const std::string config_path = (std::filesystem::path(*folder) / "config.json").string();
  auto config = ReadJsonFile(config_path);
  if (!config.ok()) return config.status();
  if (config->is_object()) config->merge_patch(options.config_overrides);
  if (!options.attn_implementation.empty()) (*config)["attn_implementation"] = options.attn_implementation;
  std::shared_ptr<PreTrainedModel> model;
  try {
    auto built = ModelFromConfig(*config, config_path, options.architecture);
    if (!built.ok()) return built.status();
    model = *std::move(built);
    CheckAttentionImplementation(model->config().attn_implementation);
  } catch (const c10::Error& error) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": ", error.what_without_backtrace()));
  }
  absl::Status loaded = LoadWeights(*model, *folder, options);
  if (!loaded.ok()) return loaded;
  GroupSiblingProjections(*model);  // decode-time fusion of q/k/v and gate/up (layers.h)
  model->eval();
  return model;
}

absl::Status SavePretrained(PreTrainedModel& model, const std::string& folder) {
  std::error_code error;
  std::filesystem::create_directories(folder, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("SavePretrained(", folder, "): ", error.message()));
  std::map<std::string, std::string> tied;
  if (model.config().tie_word_embeddings) tied = model.TiedWeights();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (!tied.count(item.key())) tensors.emplace_back(item.key(), item.value());
  }
  absl::Status saved = SaveSafetensors((std::filesystem::path(folder) / "model.safetensors").string(), tensors);
  if (!saved.ok()) return saved;
  nlohmann::json config = model.config().ToJson();
  // The config names the dtype the weights are stored in (transformers v5 writes `dtype`).
  for (const auto& [name, tensor] : tensors) {
    if (!at::isFloatingType(tensor.scalar_type())) continue;
    const at::ScalarType type = tensor.scalar_type();
    config["dtype"] = type == at::kBFloat16 ? "bfloat16" : type == at::kHalf ? "float16" : "float32";
    config.erase("torch_dtype");
    break;
  }
  std::ofstream stream(std::filesystem::path(folder) / "config.json");
  stream << config.dump(2) << "\n";
  if (!stream) return absl::DataLossError(absl::StrCat("SavePretrained(", folder, "): cannot write config.json"));
  return absl::OkStatus();
}

}  // namespace flotilla::models
