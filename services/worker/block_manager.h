// The paged KV cache's bookkeeping: which physical blocks of block_size tokens each sequence
// owns, which blocks are free, and (with prefix caching) which full blocks hold the KV of which
// token prefix, so that a new sequence with the same prefix reuses them instead of recomputing.
// It moves no tensors: the model runner reads Sequence::block_table and writes the KV there.
//
// As vLLM's v1 BlockPool / KVCacheManager (see Note [Prefix caching] in block_manager.cc):
// - a free-block queue in LRU order: a freed block that holds a cached prefix stays findable
//   until a later allocation evicts it, least recently freed first;
// - reference counts: sequences sharing a prefix share its blocks;
// - a hash -> block map of FULL blocks, each hash covering its block's tokens and every token
//   before them (chained with the parent block's hash).
//
// Example (one step of one sequence):
//   BlockManager blocks(/*num_blocks=*/1024, /*block_size=*/16, /*enable_prefix_caching=*/true);
//   int cached = blocks.ComputePrefixHit(sequence);          // e.g. 32 of a 40-token prompt
//   if (!blocks.Allocate(sequence, sequence.num_tokens() - cached)) { /* wait */ }
//   ... forward; sequence.num_computed_tokens += scheduled tokens ...
//   blocks.CacheFullBlocks(sequence);
//   ... when the sequence finishes or is preempted:
//   blocks.Free(sequence);
//
// Thread-safety: none; the engine loop's thread owns it (as it owns the scheduler).
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

#include "services/worker/sequence.h"

namespace flotilla::worker {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, bool enable_prefix_caching);

  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  // How many leading tokens of `sequence` (prompt + output) are in cached full blocks: a whole
  // number of blocks, and never all of the sequence's tokens (the last one must be computed to
  // produce logits, so a fully cached prompt costs one block of recompute, as in vLLM). 0 when
  // prefix caching is off. Changes nothing but the sequence's memoised block hashes.
  int ComputePrefixHit(Sequence& sequence);

  // Makes sequence.block_table long enough for num_computed_tokens + num_new_tokens tokens.
  // On the sequence's first allocation (empty block table, nothing computed) it first reuses the
  // cached prefix blocks (ComputePrefixHit's), setting num_computed_tokens and
  // num_cached_prompt_tokens to the hit and counting the lookup in the prefix-cache stats; pass
  // num_new_tokens counted after that hit. Returns false, changing nothing, when there are not
  // enough free blocks (evictable cached blocks count as free).
  bool Allocate(Sequence& sequence, int num_new_tokens);

  // Registers the hashes of the sequence's blocks that became full of computed tokens (call
  // after advancing num_computed_tokens). No-op without prefix caching.
  void CacheFullBlocks(Sequence& sequence);

  // Drops the sequence's hold on its blocks and clears its block table. Blocks nobody else holds
  // go back to the free queue; cached ones stay findable until evicted.
  void Free(Sequence& sequence);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  bool enable_prefix_caching() const { return enable_prefix_caching_; }
  // Free blocks, including cached ones that nobody holds (they are evicted on demand).
  int num_free_blocks() const { return static_cast<int>(free_queue_.size()); }
  int num_used_blocks() const { return num_blocks_ - num_free_blocks(); }
  // num_used_blocks / num_blocks, in [0, 1].
  double usage() const;
  // Tokens looked up in / found in the prefix cache, one lookup per admission (vLLM counts
  // tokens too, so hits / queries is its prefix-cache hit rate).
  int64_t prefix_cache_queries() const { return prefix_cache_queries_; }
  int64_t prefix_cache_hits() const { return prefix_cache_hits_; }
  // Blocks registered in the prefix cache (held or free).
  int num_cached_blocks() const { return static_cast<int>(cached_blocks_.size()); }
  // How many sequences hold `block_id` (for tests and debugging).
  int reference_count(int32_t block_id) const { return blocks_[block_id].reference_count; }

 private:
  struct Block {
    int reference_count = 0;
    std::optional<uint64_t> hash;  // set while registered in cached_blocks_
    // Position in free_queue_ while reference_count == 0.
    std::list<int32_t>::iterator free_position;
  };

  // Extends sequence.block_hashes to cover its first `num_full_blocks` blocks.
  void ComputeBlockHashes(Sequence& sequence, int num_full_blocks) const;
  // Cached blocks that hold the sequence's leading full blocks (never all of its tokens).
  std::vector<int32_t> FindPrefixBlocks(Sequence& sequence);
  // Takes a free block (least recently freed first), evicting its cached hash if any.
  int32_t PopFreeBlock();
  void RemoveFromFreeQueue(int32_t block_id);

  const int num_blocks_;
  const int block_size_;
  const bool enable_prefix_caching_;
  std::vector<Block> blocks_;
  // Front: the next block handed out. Uncached freed blocks go to the front (reused first),
  // cached ones to the back (kept longest): the back is the most recently used.
  std::list<int32_t> free_queue_;
  std::unordered_map<uint64_t, int32_t> cached_blocks_;
  int64_t prefix_cache_queries_ = 0;
  int64_t prefix_cache_hits_ = 0;
};

}  // namespace flotilla::worker
