#include "models/modeling_utils.h"

#include "models/attention.h"

namespace flotilla::models {

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
