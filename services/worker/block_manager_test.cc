#include "services/worker/block_manager.h"

#include <gtest/gtest.h>

#include <numeric>

namespace flotilla::worker {
namespace {

constexpr int kBlockSize = 4;

Sequence MakeSequence(std::vector<int32_t> prompt) {
  Sequence sequence;
  sequence.request_id = "request";
  sequence.prompt_token_ids = std::move(prompt);
  sequence.max_tokens = 100;
  sequence.max_model_len = 1000;
  return sequence;
}

std::vector<int32_t> Range(int32_t first, int count) {
  std::vector<int32_t> tokens(count);
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

// Allocates and "computes" the whole sequence, as one step of the scheduler would.
void AllocateAndCompute(BlockManager& blocks, Sequence& sequence) {
  const int hit = blocks.ComputePrefixHit(sequence);
  ASSERT_TRUE(blocks.Allocate(sequence, sequence.num_tokens() - hit));
  sequence.num_computed_tokens = sequence.num_tokens();
  blocks.CacheFullBlocks(sequence);
}

TEST(BlockManagerTest, AllocatesEnoughBlocksAndFreesThem) {
  BlockManager blocks(/*num_blocks=*/8, kBlockSize, /*enable_prefix_caching=*/false);
  Sequence sequence = MakeSequence(Range(0, 9));
  ASSERT_TRUE(blocks.Allocate(sequence, 9));
  EXPECT_EQ(sequence.block_table.size(), 3u);
  EXPECT_EQ(blocks.num_free_blocks(), 5);
  EXPECT_EQ(blocks.num_used_blocks(), 3);
  EXPECT_DOUBLE_EQ(blocks.usage(), 3.0 / 8.0);
  // Growing within the last block needs nothing new; crossing into the next one does.
  sequence.num_computed_tokens = 9;
  ASSERT_TRUE(blocks.Allocate(sequence, 3));
  EXPECT_EQ(sequence.block_table.size(), 3u);
  ASSERT_TRUE(blocks.Allocate(sequence, 4));
  EXPECT_EQ(sequence.block_table.size(), 4u);
  blocks.Free(sequence);
  EXPECT_TRUE(sequence.block_table.empty());
  EXPECT_EQ(blocks.num_free_blocks(), 8);
}

TEST(BlockManagerTest, FailedAllocationChangesNothing) {
  BlockManager blocks(/*num_blocks=*/2, kBlockSize, /*enable_prefix_caching=*/false);
  Sequence sequence = MakeSequence(Range(0, 9));
  EXPECT_FALSE(blocks.Allocate(sequence, 9));
  EXPECT_TRUE(sequence.block_table.empty());
  EXPECT_EQ(blocks.num_free_blocks(), 2);
}

TEST(BlockManagerTest, PrefixHitSharesFullBlocksAndCountsTokens) {
  BlockManager blocks(/*num_blocks=*/8, kBlockSize, /*enable_prefix_caching=*/true);
  Sequence first = MakeSequence(Range(0, 10));  // 2 full blocks + 2 tokens
  AllocateAndCompute(blocks, first);
  EXPECT_EQ(blocks.num_cached_blocks(), 2);

  std::vector<int32_t> prompt = Range(0, 8);
  prompt.push_back(99);  // diverges in the third block
  Sequence second = MakeSequence(prompt);
  EXPECT_EQ(blocks.ComputePrefixHit(second), 8);
  ASSERT_TRUE(blocks.Allocate(second, 1));
  EXPECT_EQ(second.num_computed_tokens, 8);
  EXPECT_EQ(second.num_cached_prompt_tokens, 8);
  ASSERT_EQ(second.block_table.size(), 3u);
  EXPECT_EQ(second.block_table[0], first.block_table[0]);
  EXPECT_EQ(second.block_table[1], first.block_table[1]);
  EXPECT_NE(second.block_table[2], first.block_table[2]);
  EXPECT_EQ(blocks.reference_count(first.block_table[0]), 2);
  EXPECT_EQ(blocks.reference_count(first.block_table[2]), 1);
  EXPECT_EQ(blocks.num_used_blocks(), 4);
  EXPECT_EQ(blocks.prefix_cache_queries(), 10 + 9);
  EXPECT_EQ(blocks.prefix_cache_hits(), 8);

  blocks.Free(first);
  EXPECT_EQ(blocks.reference_count(second.block_table[0]), 1);
  EXPECT_EQ(blocks.num_used_blocks(), 3);
  blocks.Free(second);
  EXPECT_EQ(blocks.num_used_blocks(), 0);
  EXPECT_EQ(blocks.num_cached_blocks(), 2);  // still findable
}

TEST(BlockManagerTest, NeverHitsTheWholeSequence) {
  BlockManager blocks(/*num_blocks=*/8, kBlockSize, /*enable_prefix_caching=*/true);
  Sequence first = MakeSequence(Range(0, 8));
  AllocateAndCompute(blocks, first);
  blocks.Free(first);
  Sequence same = MakeSequence(Range(0, 8));
  // Both blocks are cached, but the last token must be computed: the second block is recomputed.
  EXPECT_EQ(blocks.ComputePrefixHit(same), 4);
  ASSERT_TRUE(blocks.Allocate(same, 4));
  EXPECT_EQ(same.num_computed_tokens, 4);
  EXPECT_EQ(same.block_table.size(), 2u);
}

TEST(BlockManagerTest, FreedCachedBlocksAreRevivedByAHit) {
  BlockManager blocks(/*num_blocks=*/4, kBlockSize, /*enable_prefix_caching=*/true);
  Sequence first = MakeSequence(Range(0, 9));
  AllocateAndCompute(blocks, first);
  const std::vector<int32_t> first_blocks = first.block_table;
  blocks.Free(first);
  EXPECT_EQ(blocks.num_free_blocks(), 4);

  Sequence again = MakeSequence(Range(0, 9));
  ASSERT_TRUE(blocks.Allocate(again, 9 - blocks.ComputePrefixHit(again)));
  EXPECT_EQ(again.num_computed_tokens, 8);
  EXPECT_EQ(again.block_table[0], first_blocks[0]);
  EXPECT_EQ(again.block_table[1], first_blocks[1]);
  EXPECT_EQ(blocks.num_free_blocks(), 1);
}

TEST(BlockManagerTest, UncachedFreedBlocksAreReusedBeforeCachedOnes) {
  BlockManager blocks(/*num_blocks=*/4, kBlockSize, /*enable_prefix_caching=*/true);
  Sequence cached = MakeSequence(Range(0, 4));
  cached.output_token_ids = {50};
  AllocateAndCompute(blocks, cached);  // block 0 full and cached, block 1 partial
  blocks.Free(cached);
  EXPECT_EQ(blocks.num_cached_blocks(), 1);
  // Three fresh blocks: the uncached freed one and the two never used go before the cached one.
  Sequence other = MakeSequence(Range(100, 12));
  ASSERT_TRUE(blocks.Allocate(other, 12));
  EXPECT_EQ(blocks.num_cached_blocks(), 1);
  Sequence hit = MakeSequence(Range(0, 6));
  EXPECT_EQ(blocks.ComputePrefixHit(hit), 4);
}

TEST(BlockManagerTest, EvictsLeastRecentlyUsedCachedBlocksFirst) {
  BlockManager blocks(/*num_blocks=*/4, kBlockSize, /*enable_prefix_caching=*/true);
  Sequence older = MakeSequence(Range(0, 5));    // 1 cached block + 1 partial
  Sequence newer = MakeSequence(Range(100, 5));  // 1 cached block + 1 partial
  AllocateAndCompute(blocks, older);
  AllocateAndCompute(blocks, newer);
  blocks.Free(older);
  blocks.Free(newer);
  EXPECT_EQ(blocks.num_cached_blocks(), 2);

  // Three blocks: two uncached ones, then the least recently freed cached block (older's).
  Sequence filler = MakeSequence(Range(200, 12));
  ASSERT_TRUE(blocks.Allocate(filler, 12));
  EXPECT_EQ(blocks.num_cached_blocks(), 1);
  Sequence older_again = MakeSequence(Range(0, 5));
  Sequence newer_again = MakeSequence(Range(100, 5));
  EXPECT_EQ(blocks.ComputePrefixHit(older_again), 0);
  EXPECT_EQ(blocks.ComputePrefixHit(newer_again), 4);
}

TEST(BlockManagerTest, HitIsAChainAndStopsAtTheFirstMiss) {
  BlockManager blocks(/*num_blocks=*/8, kBlockSize, /*enable_prefix_caching=*/true);
  Sequence first = MakeSequence(Range(0, 13));
  AllocateAndCompute(blocks, first);
  // Same second block, different first block: the chained hash does not match.
  std::vector<int32_t> prompt = Range(0, 13);
  prompt[0] = 77;
  Sequence second = MakeSequence(prompt);
  EXPECT_EQ(blocks.ComputePrefixHit(second), 0);
}

TEST(BlockManagerTest, OutputTokensAreCachedOnceComputed) {
  BlockManager blocks(/*num_blocks=*/8, kBlockSize, /*enable_prefix_caching=*/true);
  Sequence sequence = MakeSequence(Range(0, 3));
  AllocateAndCompute(blocks, sequence);
  EXPECT_EQ(blocks.num_cached_blocks(), 0);
  sequence.output_token_ids = {3};  // sampled, KV not yet computed
  blocks.CacheFullBlocks(sequence);
  EXPECT_EQ(blocks.num_cached_blocks(), 0);
  sequence.output_token_ids.push_back(4);
  ASSERT_TRUE(blocks.Allocate(sequence, 1));
  sequence.num_computed_tokens = 4;
  blocks.CacheFullBlocks(sequence);
  EXPECT_EQ(blocks.num_cached_blocks(), 1);
}

TEST(BlockManagerTest, NoPrefixCachingNeverHits) {
  BlockManager blocks(/*num_blocks=*/8, kBlockSize, /*enable_prefix_caching=*/false);
  Sequence first = MakeSequence(Range(0, 9));
  AllocateAndCompute(blocks, first);
  blocks.Free(first);
  Sequence second = MakeSequence(Range(0, 9));
  EXPECT_EQ(blocks.ComputePrefixHit(second), 0);
  EXPECT_EQ(blocks.num_cached_blocks(), 0);
  EXPECT_EQ(blocks.prefix_cache_queries(), 0);
}

}  // namespace
}  // namespace flotilla::worker
