#include "models/masks.h"

#include <gtest/gtest.h>

#include "models/attention.h"

namespace flotilla::models {
namespace {

TEST(MasksTest, CausalSlidingAndPadding) {
  MaskArguments arguments;
  arguments.batch_size = 1;
  arguments.query_length = 5;
  arguments.implementation = "eager";
  at::Tensor additive = *CreateCausalMask(arguments);
  EXPECT_EQ(additive.sizes(), (std::vector<int64_t>{1, 1, 5, 5}));
  EXPECT_TRUE(additive.eq(0).equal(at::ones({5, 5}, at::kBool).tril().view({1, 1, 5, 5})));

  arguments.implementation = "sdpa";
  EXPECT_FALSE(CreateCausalMask(arguments).has_value()) << "sdpa handles plain causal attention with is_causal";

  arguments.sliding_window = 3;
  at::Tensor sliding = *CreateCausalMask(arguments);
  at::Tensor expected = at::ones({5, 5}, at::kBool).tril().logical_and(at::ones({5, 5}, at::kBool).triu(-2));
  EXPECT_TRUE(sliding[0][0].equal(expected));

  arguments.sliding_window.reset();
  arguments.batch_size = 2;
  arguments.attention_mask = at::tensor({0, 0, 1, 1, 1, 1, 1, 1, 1, 1}, at::kLong).view({2, 5});
  at::Tensor padded = *CreateCausalMask(arguments);
  EXPECT_FALSE(padded[0][0][4][1].item<bool>());
  EXPECT_TRUE(padded[0][0][4][2].item<bool>());
  EXPECT_TRUE(padded[1][0][4][0].item<bool>());

  // Decoding one token after 4 cached ones.
  arguments.attention_mask.reset();
  arguments.batch_size = 1;
  arguments.query_length = 1;
  arguments.past_length = 4;
  EXPECT_FALSE(CreateCausalMask(arguments).has_value());
}

TEST(MasksTest, Bidirectional) {
  MaskArguments arguments;
  arguments.batch_size = 1;
  arguments.query_length = 3;
  arguments.implementation = "sdpa";
  EXPECT_FALSE(CreateBidirectionalMask(arguments).has_value());
  arguments.attention_mask = at::tensor({1, 1, 0}, at::kLong).view({1, 3});
  at::Tensor mask = *CreateBidirectionalMask(arguments);
  EXPECT_TRUE(mask[0][0][0].equal(at::tensor({1, 1, 0}).to(at::kBool)));
}

TEST(AttentionTest, SdpaMatchesEagerReference) {
  at::Tensor query = at::randn({2, 4, 5, 8});
  at::Tensor key = at::randn({2, 2, 5, 8});
  at::Tensor value = at::randn({2, 2, 5, 8});
  AttentionArguments arguments;
  arguments.scaling = 1.0 / std::sqrt(8.0);
  arguments.num_key_value_groups = 2;
  auto [output, weights] = SdpaAttentionForward(query, key, value, std::nullopt, arguments);
  at::Tensor repeated_key = RepeatKeyValue(key, 2);
  at::Tensor repeated_value = RepeatKeyValue(value, 2);
  at::Tensor scores = at::matmul(query, repeated_key.transpose(2, 3)) * arguments.scaling;
  scores = scores.masked_fill(at::ones({5, 5}, at::kBool).triu(1), -INFINITY);
  at::Tensor expected = at::matmul(at::softmax(scores, -1), repeated_value).transpose(1, 2);
  EXPECT_TRUE(at::allclose(output, expected, 1e-5, 1e-5));
  EXPECT_THROW(CheckAttentionImplementation("flash_attention_9"), c10::Error);
}

}  // namespace
}  // namespace flotilla::models
