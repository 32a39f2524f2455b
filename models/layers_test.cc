#include "models/layers.h"

#include <mutex>
#include <set>
#include <thread>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "models/kernelize.h"

namespace flotilla::models {
namespace {

// at::parallel_for's `#pragma omp parallel` is compiled into our objects: without -fopenmp
// (cmake/FlotillaTorch.cmake) every loop silently runs on the calling thread.
TEST(LayersTest, ParallelForRunsOnSeveralThreads) {
  at::set_num_threads(2);
  std::mutex mutex;
  std::set<std::thread::id> threads;
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard<std::mutex> lock(mutex);
    threads.insert(std::this_thread::get_id());
  });
  EXPECT_EQ(threads.size(), 2u) << "at::parallel_for ran serially: is flotilla::torch compiled with -fopenmp?";
}

// Decode-sized inputs take the split-by-output-features path; it must compute what at::linear
// computes for every row count around the cut-over, with and without bias, inside inference mode
// (worker threads must inherit it) and outside.
TEST(LayersTest, SkinnyLinearMatchesATenLinear) {
  at::set_num_threads(2);
  at::manual_seed(0);
  for (bool with_bias : {false, true}) {
    Linear linear(96, 640, with_bias);
    linear->weight.copy_(at::randn({640, 96}));
    if (with_bias) linear->bias.copy_(at::randn({640}));
    for (int64_t rows : {1, 2, 7, 16, 17, 40}) {
      at::Tensor input = at::randn({1, rows, 96});
      at::Tensor expected = at::linear(input, linear->weight, linear->bias);
      at::Tensor actual = linear->forward(input);
      EXPECT_EQ(actual.sizes(), expected.sizes());
      EXPECT_TRUE(at::allclose(actual, expected, 1e-5, 1e-5)) << "rows " << rows << " bias " << with_bias;
      c10::InferenceMode inference_mode;
      at::Tensor in_inference = linear->forward(input);
      EXPECT_TRUE(at::allclose(in_inference, expected, 1e-5, 1e-5)) << "inference mode, rows " << rows;
    }
  }
}

TEST(LayersTest, SkinnyLinearDoesNotDependOnTheThreadCount) {
  at::manual_seed(1);
  Linear linear(64, 1000, /*bias=*/false);
  linear->weight.copy_(at::randn({1000, 64}));
  at::Tensor input = at::randn({3, 64});
  at::set_num_threads(2);
  at::Tensor two = linear->forward(input);
  at::set_num_threads(1);
  at::Tensor one = linear->forward(input);
  at::set_num_threads(2);
  EXPECT_TRUE(at::equal(one, two));
}

// Note [Sibling projections]: q/k/v of one module computed in one pass under Linear=builtin; each
// output equals its own at::linear, a sibling called with another input computes its own, and
// without the builtin mapping nothing changes.
class Siblings : public torch::nn::Module {
 public:
  Siblings() {
    q_proj = register_module("q_proj", Linear(96, 640, true));
    k_proj = register_module("k_proj", Linear(96, 128, true));
    v_proj = register_module("v_proj", Linear(96, 128, true));
    gate_proj = register_module("gate_proj", Linear(96, 200, false));
    up_proj = register_module("up_proj", Linear(64, 200, false));  // another input size: no group
  }
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, gate_proj{nullptr}, up_proj{nullptr};
};

TEST(LayersTest, SiblingProjectionsComputeTogetherAndMatchEachAlone) {
  at::set_num_threads(2);
  at::manual_seed(3);
  auto module = std::make_shared<Siblings>();
  for (auto& parameter : module->parameters()) parameter.normal_();
  EXPECT_EQ(GroupSiblingProjections(*module), 1);
  ASSERT_TRUE(module->q_proj->siblings);
  EXPECT_FALSE(module->gate_proj->siblings);
  c10::InferenceMode inference_mode;
  for (const char* mapping : {"Linear=builtin", "Linear=eager"}) {
    SCOPED_TRACE(mapping);
    InstallLayerKernels(*ResolveLayerKernels(mapping));
    const at::Tensor input = at::randn({1, 1, 96});
    const at::Tensor other = at::randn({1, 1, 96});
    const at::Tensor query = module->q_proj->forward(input);
    const at::Tensor key = module->k_proj->forward(input);
    const at::Tensor key_of_other = module->k_proj->forward(other);  // not the pending input
    const at::Tensor value = module->v_proj->forward(input);
    const at::Tensor value_again = module->v_proj->forward(input);  // already taken: computed anew
    EXPECT_TRUE(at::allclose(query, at::linear(input, module->q_proj->weight, module->q_proj->bias), 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(key, at::linear(input, module->k_proj->weight, module->k_proj->bias), 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(key_of_other, at::linear(other, module->k_proj->weight, module->k_proj->bias), 1e-5,
                             1e-5));
    EXPECT_TRUE(at::allclose(value, at::linear(input, module->v_proj->weight, module->v_proj->bias), 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(value_again, value, 1e-5, 1e-5));
    // Prefill-sized inputs stay with at::linear.
    const at::Tensor rows = at::randn({1, 7, 96});
    EXPECT_TRUE(at::allclose(module->k_proj->forward(rows),
                             at::linear(rows, module->k_proj->weight, module->k_proj->bias), 1e-5, 1e-5));
  }
  InstallLayerKernels(LayerKernels{});
}

}  // namespace
}  // namespace flotilla::models
