// The auto registry and from_pretrained / save_pretrained.
//
// Each model file registers its classes at static-initialisation time, under its model_type and
// its architectures' names (the flotilla_models library is shared, so every registration runs):
//
//   FLOTILLA_REGISTER_MODEL("llama", "LlamaForCausalLM", LlamaForCausalLM::FromConfig);
//
// and callers load by folder or registry reference:
//
//   ASSIGN_OR_RETURN(std::shared_ptr<PreTrainedModel> model,
//                    FromPretrained("/models/smollm2", {.attn_implementation = "eager"}));
//   RETURN_IF_ERROR(SavePretrained(*model, "/tmp/copy"));   // transformers loads it back
//
// The architecture is LoadOptions::architecture when given, else config.json's `architectures[0]`
// when registered, else the model_type's first registration. A bare class loads a fuller
// checkpoint as transformers' base_model_prefix logic does (PreTrainedModel::CheckpointBasePrefix;
// a pooler the head never had is dropped, see DropMissingModule). Loading checks every parameter
// against the checkpoint (missing or
// mis-shaped: an error naming the file and key; extra: one warning listing them), ties weights as
// the model declares, and places all weights that need a copy in one pre-sized allocation; weights
// whose dtype already matches alias the mmap'd file (zero-copy).
//
// Thread-safety: registration at static-init time; FromPretrained may run concurrently.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "models/modeling_utils.h"
#include "models/tensor_parallel.h"

namespace flotilla::models {

struct LoadOptions {
  std::string attn_implementation;         // "" = config.json's, else "sdpa"
  std::optional<at::ScalarType> dtype;     // default: float32 (transformers' default)
  bool zero_copy = true;                   // alias the mapping when dtypes match (CPU)
  nlohmann::json config_overrides = nlohmann::json::object();  // merged into config.json
  // "" = config.json's architectures[0]; else a class registered for the config's model_type, e.g.
  // "CLIPVisionModel" or "CLIPTextModelWithProjection" from a CLIPModel folder, "BertModel" from a
  // BertForMaskedLM one (as <Class>.from_pretrained(folder) in transformers).
  std::string architecture;
  // Tensor parallelism (tensor_parallel.h): with a group of N > 1 ranks, each sharded weight holds
  // this rank's slice only (read from the mapped checkpoint; nothing else of it is kept) and each
  // sharded layer runs its collective. The plan is `tensor_parallel_plan` when set (a
  // base_model_tp_plan-style object; "lm_head" names the head), else config.json's
  // base_model_tp_plan, else the model file's default; the head's lm_head is colwise_gather_output
  // unless tied to a replicated embedding (then replicated).
  std::shared_ptr<TensorParallelGroup> tensor_parallel_group;
  nlohmann::json tensor_parallel_plan;  // null: none
};

// Builds a model from config.json's contents (weights uninitialised).
using ModelFactory = std::function<absl::StatusOr<std::shared_ptr<PreTrainedModel>>(const nlohmann::json& config)>;

void RegisterModel(const std::string& model_type, const std::string& architecture, ModelFactory factory);
std::vector<std::string> RegisteredModelTypes();

struct ModelRegistration {
  ModelRegistration(const std::string& model_type, const std::string& architecture, ModelFactory factory) {
    RegisterModel(model_type, architecture, std::move(factory));
  }
};
#define FLOTILLA_REGISTER_MODEL_CONCAT_INNER(a, b) a##b
#define FLOTILLA_REGISTER_MODEL_CONCAT(a, b) FLOTILLA_REGISTER_MODEL_CONCAT_INNER(a, b)
#define FLOTILLA_REGISTER_MODEL(model_type, architecture, factory)                                    \
  static ::flotilla::models::ModelRegistration FLOTILLA_REGISTER_MODEL_CONCAT(model_registration_, \
                                                                              __COUNTER__)(model_type, architecture, factory)

// Builds (unloaded) the class config.json names. `architecture` overrides architectures[0]; it
// must be registered for the config's model_type.
absl::StatusOr<std::shared_ptr<PreTrainedModel>> ModelFromConfig(const nlohmann::json& config,
                                                                 const std::string& config_path,
                                                                 const std::string& architecture = "");

// The seam for registry references: `namespace/name@revision` resolves to a local folder through
// the resolver the registry client library installs (PullToCache, cached by commit id). A local
// folder is returned as is.
using ModelReferenceResolver = std::function<absl::StatusOr<std::string>(const std::string& reference)>;
void SetModelReferenceResolver(ModelReferenceResolver resolver);
absl::StatusOr<std::string> ResolveModelPath(const std::string& path_or_reference);

absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromPretrained(const std::string& path_or_reference,
                                                                const LoadOptions& options = {});
// Loads the checkpoint in `folder` into an already-built model.
absl::Status LoadWeights(PreTrainedModel& model, const std::string& folder, const LoadOptions& options = {});

// Writes config.json and model.safetensors (tied duplicates omitted, as transformers does).
absl::Status SavePretrained(PreTrainedModel& model, const std::string& folder);

}  // namespace flotilla::models
