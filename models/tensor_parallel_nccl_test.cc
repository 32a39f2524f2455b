// The NCCL backend links, registers, and — on a machine with a GPU — runs a one-rank group's
// collectives on CUDA tensors (a single lent GPU cannot host two NCCL ranks).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "models/tensor_parallel.h"

namespace flotilla::models {
namespace {

TEST(TensorParallelNcclTest, AOneRankGroupAllReducesOnTheGpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU here: the NCCL backend is only compiled and linked";
  auto group = TensorParallelGroup::Join({.rank = 0, .world_size = 1, .master_port = 29517, .backend = "nccl"});
  ASSERT_TRUE(group.ok()) << group.status();
  at::Tensor tensor = at::arange(8, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
  (*group)->AllReduceSum(tensor);
  EXPECT_TRUE(at::equal(tensor.cpu(), at::arange(8, at::kFloat)));
}

TEST(TensorParallelNcclTest, AnUnknownBackendIsRefusedNamingTheKnownOnes) {
  auto group = TensorParallelGroup::Join({.rank = 0, .world_size = 2, .master_port = 29518, .backend = "mpi"});
  ASSERT_FALSE(group.ok());
  EXPECT_NE(group.status().message().find("known: gloo, nccl"), std::string::npos) << group.status();
}

}  // namespace
}  // namespace flotilla::models
