#include "models/layers.h"

#include <mutex>
#include <set>
#include <thread>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace flotilla::models
