#include "models/modeling_utils.h"

#include "models/attention.h"

namespace flotilla::models {

void PreTrainedModel::SetAttentionImplementation(const std::string& name) {
  CheckAttentionImplementation(name);
  mutable_config().attn_implementation = name;
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
