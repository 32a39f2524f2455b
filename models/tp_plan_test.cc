#include "models/tp_plan.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "models/auto.h"

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

// Conv1D ([in, out]) styles split the other dimension; the packed one splits q, k, v separately.
TEST(TensorParallelPlanTest, Conv1DShardsReassemble) {
  at::Tensor weight = at::randn({8, 24});  // [in, 3 * out]
  at::Tensor bias = at::randn({24});
  EXPECT_EQ(*ParseParallelStyle("conv1d_packed_colwise"), ParallelStyle::kConv1DPackedColwise);
  EXPECT_EQ(PackedParts(ParallelStyle::kConv1DPackedColwise), 3);
  for (int64_t world_size : {1, 2, 4}) {
    std::vector<at::Tensor> colwise, colwise_bias, rowwise, packed, packed_bias;
    for (int64_t rank = 0; rank < world_size; ++rank) {
      colwise.push_back(*ShardParameter(weight, "c_fc.weight", ParallelStyle::kConv1DColwise, rank, world_size));
      colwise_bias.push_back(*ShardParameter(bias, "c_fc.bias", ParallelStyle::kConv1DColwise, rank, world_size));
      rowwise.push_back(*ShardParameter(weight, "c_proj.weight", ParallelStyle::kConv1DRowwise, rank, world_size));
      EXPECT_TRUE(ShardParameter(bias, "c_proj.bias", ParallelStyle::kConv1DRowwise, rank, world_size)->equal(bias));
      packed.push_back(*ShardParameter(weight, "c_attn.weight", ParallelStyle::kConv1DPackedColwise, rank, world_size));
      packed_bias.push_back(*ShardParameter(bias, "c_attn.bias", ParallelStyle::kConv1DPackedColwise, rank, world_size));
    }
    EXPECT_EQ(colwise[0].sizes(), (std::vector<int64_t>{8, 24 / world_size}));
    EXPECT_TRUE(at::cat(colwise, 1).equal(weight));
    EXPECT_TRUE(at::cat(colwise_bias, 0).equal(bias));
    EXPECT_TRUE(at::cat(rowwise, 0).equal(weight));
    // Each rank holds its slice of q, of k and of v; the three reassemble separately.
    for (int64_t part = 0; part < 3; ++part) {
      std::vector<at::Tensor> weight_pieces, bias_pieces;
      for (int64_t rank = 0; rank < world_size; ++rank) {
        weight_pieces.push_back(packed[rank].chunk(3, 1)[part]);
        bias_pieces.push_back(packed_bias[rank].chunk(3, 0)[part]);
      }
      EXPECT_TRUE(at::cat(weight_pieces, 1).equal(weight.chunk(3, 1)[part])) << "part " << part;
      EXPECT_TRUE(at::cat(bias_pieces, 0).equal(bias.chunk(3, 0)[part])) << "part " << part;
    }
  }
  auto uneven = ShardParameter(weight, "c_attn.weight", ParallelStyle::kConv1DPackedColwise, 0, 3);
  ASSERT_FALSE(uneven.ok());
  EXPECT_NE(uneven.status().message().find("c_attn.weight"), std::string::npos);
}

// GPT-2's default plan: a checkpoint as GPT2LMHeadModel saves it, sharded for 1, 2 and 4 ranks,
// reassembles into every full weight (Conv1D splits on the right dimension, c_attn by q, k, v).
TEST(TensorParallelPlanTest, Gpt2DefaultPlanShardsReassemble) {
  const nlohmann::json config = {{"model_type", "gpt2"}, {"architectures", {"GPT2LMHeadModel"}}, {"vocab_size", 32},
                                 {"n_embd", 16},         {"n_head", 4},                        {"n_layer", 2},
                                 {"n_positions", 16}};
  auto model = ModelFromConfig(config, "config.json");
  ASSERT_TRUE(model.ok()) << model.status();
  for (auto& parameter : (*model)->parameters()) parameter.set_data(at::randn(parameter.sizes()));
  const std::string folder = (std::filesystem::temp_directory_path() / "flotilla_tp_plan_gpt2").string();
  ASSERT_TRUE(SavePretrained(**model, folder).ok());
  auto checkpoint = SafetensorsCheckpoint::Open(folder);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const TensorParallelPlan plan = (*model)->tensor_parallel_plan();
  ASSERT_EQ(plan.Match("h.1.attn.c_attn"), ParallelStyle::kConv1DPackedColwise);
  ASSERT_EQ(plan.Match("h.0.mlp.c_proj"), ParallelStyle::kConv1DRowwise);
  const TensorParallelPlan top_level;
  for (int64_t world_size : {1, 2, 4}) {
    std::vector<std::map<std::string, at::Tensor>> ranks;
    for (int64_t rank = 0; rank < world_size; ++rank) {
      auto shards = LoadShardedStateDict(**checkpoint, plan, top_level, "transformer.", rank, world_size);
      ASSERT_TRUE(shards.ok()) << shards.status();
      ranks.push_back(*std::move(shards));
    }
    for (const std::string& name : (*checkpoint)->TensorNames()) {
      at::Tensor full = *(*checkpoint)->Get(name);
      std::string module_name = name.substr(0, name.rfind('.'));
      const bool is_bias = name.size() > 5 && name.substr(name.size() - 5) == ".bias";
      auto style = module_name.rfind("transformer.", 0) == 0 ? plan.Match(module_name.substr(12)) : std::nullopt;
      std::vector<at::Tensor> shards;
      for (auto& shards_of_rank : ranks) shards.push_back(shards_of_rank.at(name));
      if (!style || (*style == ParallelStyle::kConv1DRowwise && is_bias)) {
        for (const auto& shard : shards) EXPECT_TRUE(shard.equal(full)) << name;
        continue;
      }
      const int64_t dim = (*style == ParallelStyle::kConv1DRowwise || is_bias) ? 0 : 1;
      EXPECT_EQ(shards[0].size(dim), full.size(dim) / world_size) << name;
      const int64_t parts = PackedParts(*style);
      std::vector<at::Tensor> reassembled;
      for (int64_t part = 0; part < parts; ++part) {
        std::vector<at::Tensor> pieces;
        for (const auto& shard : shards) pieces.push_back(shard.chunk(parts, dim)[part]);
        reassembled.push_back(at::cat(pieces, dim));
      }
      EXPECT_TRUE(at::cat(reassembled, dim).equal(full)) << name << " for " << world_size << " ranks";
    }
  }
  std::filesystem::remove_all(folder);
}

}  // namespace
}  // namespace flotilla::models
