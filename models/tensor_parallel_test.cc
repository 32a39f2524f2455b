// Two ranks of a group as two threads of this process, over loopback: the collectives serving
// uses, with Gloo alone and with a device backend beside the host group (the layout --device cuda
// gives, where NCCL moves device tensors and Gloo the host's step messages). On a machine without
// GPUs the device backend is a second Gloo group registered under another name: what is checked
// is that both groups rendezvous through the one store and that host tensors take the host group.
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "models/tensor_parallel.h"

namespace flotilla::models {
namespace {

const bool kTwinRegistered = RegisterTensorParallelBackend(
    "gloo_as_device", [](const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size,
                         std::chrono::milliseconds timeout) -> c10::intrusive_ptr<c10d::Backend> {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
    });

int FreePort() {
  static int next = 29600 + static_cast<int>(::getpid() % 200) * 2;
  return next++;
}

// Runs `body(group)` on ranks 0 and 1 of one group, each in its own thread.
void OnTwoRanks(const std::string& backend, const std::function<void(TensorParallelGroup&)>& body) {
  const int port = FreePort();
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    ranks.emplace_back([&, rank] {
      auto group = TensorParallelGroup::Join({.rank = rank, .world_size = 2, .master_port = port,
                                              .timeout = absl::Seconds(30), .backend = backend});
      ASSERT_TRUE(group.ok()) << group.status();
      body(**group);
      (*group)->Barrier();
    });
  }
  for (std::thread& rank : ranks) rank.join();
}

class TensorParallelGroupTest : public testing::TestWithParam<std::string> {};

TEST_P(TensorParallelGroupTest, CollectivesOnHostTensorsAgreeOnEveryRank) {
  OnTwoRanks(GetParam(), [](TensorParallelGroup& group) {
    const double rank = static_cast<double>(group.rank());
    at::Tensor partial = at::full({3, 5}, rank + 1.5, at::kFloat);
    group.AllReduceSum(partial);
    EXPECT_TRUE(at::equal(partial, at::full({3, 5}, 4.0, at::kFloat)));  // 1.5 + 2.5

    at::Tensor shard = at::full({2, 3}, rank, at::kFloat);
    at::Tensor gathered = group.AllGather(shard, -1);
    EXPECT_TRUE(at::equal(gathered, at::cat({at::zeros({2, 3}), at::ones({2, 3})}, -1)));

    // Rank 0's step message reaches the other rank unchanged.
    at::Tensor message = group.rank() == 0 ? at::arange(7, at::kLong) : at::zeros({7}, at::kLong);
    group.Broadcast(message, 0);
    EXPECT_TRUE(at::equal(message, at::arange(7, at::kLong)));
  });
}

INSTANTIATE_TEST_SUITE_P(Backends, TensorParallelGroupTest, testing::Values("gloo", "gloo_as_device"));

TEST(TensorParallelGroupJoinTest, AnUnknownBackendNamesTheKnownOnes) {
  auto group = TensorParallelGroup::Join({.rank = 0, .world_size = 2, .master_port = FreePort(), .backend = "mpi"});
  ASSERT_FALSE(group.ok());
  EXPECT_NE(group.status().message().find("known: gloo"), std::string::npos) << group.status();
}

}  // namespace
}  // namespace flotilla::models
