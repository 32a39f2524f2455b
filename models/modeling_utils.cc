#include "models/modeling_utils.h"

#include "models/attention.h"

namespace flotilla::models {

at::Tensor HiddenStatesForLogits(const at::Tensor& hidden_states, const ForwardInputs& inputs) {
  if (inputs.logits_indices.has_value()) {
    const at::Tensor& indices = *inputs.logits_indices;
    TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong,
                "HiddenStatesForLogits: logits_indices must be int64 [S] but got ", indices.scalar_type(), " ",
                indices.sizes());
    return hidden_states.index_select(1, indices.to(hidden_states.device()));
  }
  const int64_t length = hidden_states.size(1);
  if (inputs.logits_to_keep > 0 && inputs.logits_to_keep < length) {
    return hidden_states.narrow(1, length - inputs.logits_to_keep, inputs.logits_to_keep);
  }
  return hidden_states;
}

void PreTrainedModel::SetAttentionImplementation(const std::string& name) {
  CheckAttentionImplementation(name);
  mutable_config().attn_implementation = name;
}

at::Tensor PreTrainedModel::GetTextFeatures(const ForwardInputs& /*inputs*/) {
  TORCH_CHECK(false, "get_text_features: model_type \"", config().model_type, "\" has no text embeddings");
}

at::Tensor PreTrainedModel::GetImageFeatures(const ForwardInputs& /*inputs*/) {
  TORCH_CHECK(false, "get_image_features: model_type \"", config().model_type, "\" has no image embeddings");
}

TensorParallelPlan PreTrainedModel::tensor_parallel_plan() const {
  if (!config().tp_plan_override.is_null()) {
    auto plan = TensorParallelPlan::FromJson(config().tp_plan_override);
    TORCH_CHECK(plan.ok(), "config.json base_model_tp_plan: ", plan.status().message());
    return *plan;
  }
  return BaseModelTensorParallelPlan();
}

}  // namespace flotilla::models
