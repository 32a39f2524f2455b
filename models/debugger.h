// The model debugger: records every submodule's inputs and outputs (shape, dtype, mean, std, min,
// max and the first few values) as nested JSON in call order, like transformers'
// model_addition_debugger_context. Used by `flotilla forward --debug-json FILE` to line a port up
// with transformers layer by layer.
//
//   ModelDebugger debugger(*model);               // active on this thread until destroyed
//   model->Forward(inputs);
//   WriteFile("debug.json", debugger.Json().dump(2));
//
// Model code opens a DebugScope at the top of each module's forward and passes its result through
// Output(); intermediates can be named with DebugTensor (as llama.cpp's cb(cur, "attn_norm", il)).
// When no debugger is active a DebugScope costs one thread-local load.
//
// Thread-safety: a debugger records only the forward running on the thread that created it.
#pragma once

#include <initializer_list>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

namespace flotilla::models {

// Shape, dtype, statistics and the first `max_values` values of a tensor.
nlohmann::json TensorSummary(const at::Tensor& tensor, int max_values = 5);

class ModelDebugger {
 public:
  explicit ModelDebugger(const torch::nn::Module& root, std::string root_name = "");
  ~ModelDebugger();
  ModelDebugger(const ModelDebugger&) = delete;
  ModelDebugger& operator=(const ModelDebugger&) = delete;

  // {"module": ..., "class": ..., "inputs": {...}, "outputs": {...}, "intermediates": {...},
  //  "children": [...]} for each top-level call recorded.
  nlohmann::json Json() const;

  // Used by DebugScope.
  static ModelDebugger* Active();
  void Enter(const torch::nn::Module* module, const std::vector<std::pair<std::string, at::Tensor>>& inputs);
  void Exit(const std::vector<std::pair<std::string, at::Tensor>>& outputs);
  void Intermediate(const std::string& name, const at::Tensor& tensor);

 private:
  std::map<const torch::nn::Module*, std::string> names_;
  nlohmann::json calls_ = nlohmann::json::array();
  std::vector<nlohmann::json> stack_;
  ModelDebugger* previous_ = nullptr;
};

class DebugScope {
 public:
  DebugScope(const torch::nn::Module* module, std::initializer_list<std::pair<const char*, at::Tensor>> inputs);
  ~DebugScope();
  at::Tensor Output(at::Tensor output, const char* name = "output");
  void Outputs(std::initializer_list<std::pair<const char*, at::Tensor>> outputs);

 private:
  ModelDebugger* debugger_;
  bool exited_ = false;
};

// Records a named intermediate in the innermost open scope, when a debugger is active.
inline void DebugTensor(const char* name, const at::Tensor& tensor) {
  if (ModelDebugger* debugger = ModelDebugger::Active()) debugger->Intermediate(name, tensor);
}

}  // namespace flotilla::models
