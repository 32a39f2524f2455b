#include "models/debugger.h"

namespace flotilla::models {
namespace {
thread_local ModelDebugger* active_debugger = nullptr;
}

nlohmann::json TensorSummary(const at::Tensor& tensor, int max_values) {
  if (!tensor.defined()) return nullptr;
  nlohmann::json summary = {{"shape", tensor.sizes().vec()}, {"dtype", std::string(c10::toString(tensor.scalar_type()))}};
  if (tensor.numel() == 0) return summary;
  at::Tensor values = tensor.detach().to(at::kCPU).to(at::kDouble).flatten();
  summary["mean"] = values.mean().item<double>();
  summary["std"] = values.numel() > 1 ? values.std().item<double>() : 0.0;
  summary["min"] = values.min().item<double>();
  summary["max"] = values.max().item<double>();
  std::vector<double> first;
  for (int64_t i = 0; i < std::min<int64_t>(max_values, values.numel()); ++i) first.push_back(values[i].item<double>());
  summary["values"] = first;
  return summary;
}

ModelDebugger::ModelDebugger(const torch::nn::Module& root, std::string root_name) : previous_(active_debugger) {
  for (const auto& item : root.named_modules(root_name)) names_[item.value().get()] = item.key();
  names_[&root] = root_name;
  active_debugger = this;
}

ModelDebugger::~ModelDebugger() { active_debugger = previous_; }

ModelDebugger* ModelDebugger::Active() { return active_debugger; }

nlohmann::json ModelDebugger::Json() const { return calls_; }

void ModelDebugger::Enter(const torch::nn::Module* module, const std::vector<std::pair<std::string, at::Tensor>>& inputs) {
  auto found = names_.find(module);
  nlohmann::json call = {{"module", found != names_.end() ? found->second : std::string("?")},
                         {"class", module->name()},
                         {"inputs", nlohmann::json::object()}};
  for (const auto& [name, tensor] : inputs) call["inputs"][name] = TensorSummary(tensor);
  stack_.push_back(std::move(call));
}

void ModelDebugger::Exit(const std::vector<std::pair<std::string, at::Tensor>>& outputs) {
  if (stack_.empty()) return;
  nlohmann::json call = std::move(stack_.back());
  stack_.pop_back();
  call["outputs"] = nlohmann::json::object();
  for (const auto& [name, tensor] : outputs) call["outputs"][name] = TensorSummary(tensor);
  if (stack_.empty()) {
    calls_.push_back(std::move(call));
  } else {
    stack_.back()["children"].push_back(std::move(call));
  }
}

void ModelDebugger::Intermediate(const std::string& name, const at::Tensor& tensor) {
  if (!stack_.empty()) stack_.back()["intermediates"][name] = TensorSummary(tensor);
}

DebugScope::DebugScope(const torch::nn::Module* module, std::initializer_list<std::pair<const char*, at::Tensor>> inputs)
    : debugger_(ModelDebugger::Active()) {
  if (debugger_ == nullptr) return;
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& [name, tensor] : inputs) named.emplace_back(name, tensor);
  debugger_->Enter(module, named);
}

DebugScope::~DebugScope() {
  if (debugger_ != nullptr && !exited_) debugger_->Exit({});
}

at::Tensor DebugScope::Output(at::Tensor output, const char* name) {
  if (debugger_ != nullptr && !exited_) {
    debugger_->Exit({{name, output}});
    exited_ = true;
  }
  return output;
}

void DebugScope::Outputs(std::initializer_list<std::pair<const char*, at::Tensor>> outputs) {
  if (debugger_ == nullptr || exited_) return;
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& [name, tensor] : outputs) named.emplace_back(name, tensor);
  debugger_->Exit(named);
  exited_ = true;
}

}  // namespace flotilla::models
