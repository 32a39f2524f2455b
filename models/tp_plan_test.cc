#include "models/tp_plan.h"

#include <filesystem>

#include <gtest/gtest.h>

namespace flotilla::models {
namespace {

TEST(TensorParallelPlanTest, ParsesAndMatchesGlobs) {
  auto plan = TensorParallelPlan::FromJson(
      {{"layers.*.self_attn.q_proj", "colwise"}, {"layers.*.self_attn.o_proj", "rowwise"}, {"embed_tokens", "vocab_parallel"}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->Match("layers.11.self_attn.q_proj"), ParallelStyle::kColwise);
  EXPECT_EQ(plan->Match("layers.0.self_attn.o_proj"), ParallelStyle::kRowwise);
  EXPECT_EQ(plan->Match("embed_tokens"), ParallelStyle::kVocabParallel);
  EXPECT_FALSE(plan->Match("layers.0.self_attn.k_proj").has_value());
  EXPECT_FALSE(plan->Match("layers.0.1.self_attn.q_proj").has_value());
  EXPECT_FALSE(TensorParallelPlan::FromJson({{"x", "diagonal"}}).ok());
}

// Shards for N ranks reassemble into the full weight, for every style.
TEST(TensorParallelPlanTest, ShardsReassemble) {
  at::Tensor weight = at::randn({8, 12});
  at::Tensor bias = at::randn({8});
  for (int64_t world_size : {1, 2, 4}) {
    std::vector<at::Tensor> colwise, rowwise, packed, bias_shards;
    for (int64_t rank = 0; rank < world_size; ++rank) {
      colwise.push_back(*ShardParameter(weight, "q_proj.weight", ParallelStyle::kColwise, rank, world_size));
      rowwise.push_back(*ShardParameter(weight, "o_proj.weight", ParallelStyle::kRowwise, rank, world_size));
      packed.push_back(*ShardParameter(weight, "gate_up_proj.weight", ParallelStyle::kPackedColwise, rank, world_size));
      bias_shards.push_back(*ShardParameter(bias, "q_proj.bias", ParallelStyle::kColwise, rank, world_size));
      EXPECT_TRUE(ShardParameter(bias, "o_proj.bias", ParallelStyle::kRowwise, rank, world_size)->equal(bias));
    }
    EXPECT_TRUE(at::cat(colwise, 0).equal(weight));
    EXPECT_TRUE(at::cat(rowwise, 1).equal(weight));
    EXPECT_TRUE(at::cat(bias_shards, 0).equal(bias));
    // Packed: each rank holds its slice of both halves; the halves reassemble separately.
    std::vector<at::Tensor> first_half, second_half;
    for (const auto& shard : packed) {
      first_half.push_back(shard.narrow(0, 0, shard.size(0) / 2));
      second_half.push_back(shard.narrow(0, shard.size(0) / 2, shard.size(0) / 2));
    }
    EXPECT_TRUE(at::cat({at::cat(first_half, 0), at::cat(second_half, 0)}, 0).equal(weight));
  }
  auto uneven = ShardParameter(weight, "q_proj.weight", ParallelStyle::kColwise, 0, 3);
  ASSERT_FALSE(uneven.ok());
  EXPECT_NE(uneven.status().message().find("q_proj.weight"), std::string::npos);
}

TEST(TensorParallelPlanTest, LoadsShardedStateDictFromCheckpoint) {
  const std::string path = (std::filesystem::temp_directory_path() / "flotilla_tp_plan_test.safetensors").string();
  at::Tensor q = at::randn({8, 4});
  at::Tensor o = at::randn({4, 8});
  at::Tensor head = at::randn({16, 4});
  at::Tensor norm = at::randn({4});
  ASSERT_TRUE(SaveSafetensors(path, {{"model.layers.0.self_attn.q_proj.weight", q},
                                     {"model.layers.0.self_attn.o_proj.weight", o},
                                     {"model.norm.weight", norm},
                                     {"lm_head.weight", head}})
                  .ok());
  auto checkpoint = SafetensorsCheckpoint::Open(path);
  ASSERT_TRUE(checkpoint.ok());
  auto plan = *TensorParallelPlan::FromJson({{"layers.*.self_attn.q_proj", "colwise"}, {"layers.*.self_attn.o_proj", "rowwise"}});
  auto top = *TensorParallelPlan::FromJson({{"lm_head", "colwise_gather_output"}});
  std::vector<std::map<std::string, at::Tensor>> ranks;
  for (int64_t rank = 0; rank < 2; ++rank) {
    auto shards = LoadShardedStateDict(**checkpoint, plan, top, "model.", rank, 2);
    ASSERT_TRUE(shards.ok()) << shards.status();
    ranks.push_back(*shards);
  }
  EXPECT_EQ(ranks[0]["model.layers.0.self_attn.q_proj.weight"].sizes(), (std::vector<int64_t>{4, 4}));
  EXPECT_TRUE(at::cat({ranks[0]["model.layers.0.self_attn.q_proj.weight"], ranks[1]["model.layers.0.self_attn.q_proj.weight"]}, 0).equal(q));
  EXPECT_TRUE(at::cat({ranks[0]["model.layers.0.self_attn.o_proj.weight"], ranks[1]["model.layers.0.self_attn.o_proj.weight"]}, 1).equal(o));
  EXPECT_TRUE(at::cat({ranks[0]["lm_head.weight"], ranks[1]["lm_head.weight"]}, 0).equal(head));
  EXPECT_TRUE(ranks[1]["model.norm.weight"].equal(norm));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace flotilla::models
