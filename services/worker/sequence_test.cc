#include "services/worker/sequence.h"

#include <gtest/gtest.h>

namespace flotilla::worker {
namespace {

Sequence MakeSequence() {
  Sequence sequence;
  sequence.request_id = "request";
  sequence.prompt_token_ids = {10, 11, 12};
  sequence.max_tokens = 5;
  sequence.eos_token_ids = {2};
  sequence.max_model_len = 100;
  return sequence;
}

TEST(SequenceTest, TokenIdSpansPromptThenOutput) {
  Sequence sequence = MakeSequence();
  sequence.output_token_ids = {20, 21};
  EXPECT_EQ(sequence.num_tokens(), 5);
  EXPECT_EQ(sequence.token_id(0), 10);
  EXPECT_EQ(sequence.token_id(2), 12);
  EXPECT_EQ(sequence.token_id(3), 20);
  EXPECT_EQ(sequence.token_id(4), 21);
}

TEST(SequenceTest, EosStops) {
  Sequence sequence = MakeSequence();
  EXPECT_FALSE(sequence.AppendToken(7));
  EXPECT_TRUE(sequence.AppendToken(2));
  EXPECT_TRUE(sequence.is_finished());
  EXPECT_EQ(sequence.finish_reason, "stop");
  // The stop token is kept, as vLLM keeps it in token_ids.
  EXPECT_EQ(sequence.output_token_ids, (std::vector<int32_t>{7, 2}));
}

TEST(SequenceTest, IgnoreEosKeepsGoingButStopIdsStillStop) {
  Sequence sequence = MakeSequence();
  sequence.ignore_eos = true;
  sequence.stop_token_ids = {9};
  EXPECT_FALSE(sequence.AppendToken(2));
  EXPECT_TRUE(sequence.AppendToken(9));
  EXPECT_EQ(sequence.finish_reason, "stop");
}

TEST(SequenceTest, StopIdsDoNotStopBeforeMinTokens) {
  Sequence sequence = MakeSequence();
  sequence.stop_token_ids = {9};
  sequence.min_tokens = 3;
  EXPECT_FALSE(sequence.AppendToken(9));
  EXPECT_FALSE(sequence.AppendToken(2));
  EXPECT_TRUE(sequence.AppendToken(9));
  EXPECT_EQ(sequence.finish_reason, "stop");
}

TEST(SequenceTest, MaxTokensCountsCarriedOverTokens) {
  Sequence sequence = MakeSequence();
  sequence.output_token_ids = {20, 21, 22};  // from a failover
  sequence.num_carried_over_tokens = 3;
  EXPECT_FALSE(sequence.AppendToken(23));
  EXPECT_TRUE(sequence.AppendToken(24));
  EXPECT_EQ(sequence.finish_reason, "length");
}

TEST(SequenceTest, MaxModelLenFinishesWithLength) {
  Sequence sequence = MakeSequence();
  sequence.max_tokens = 50;
  sequence.max_model_len = 5;
  EXPECT_FALSE(sequence.AppendToken(20));
  EXPECT_TRUE(sequence.AppendToken(21));
  EXPECT_EQ(sequence.finish_reason, "length");
}

TEST(SequenceTest, SequencesWithoutSeedGetDifferentRandomSeeds) {
  Sequence first;
  Sequence second;
  EXPECT_NE(first.random_seed, second.random_seed);
}

}  // namespace
}  // namespace flotilla::worker
