#include "services/worker/block_manager.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "services/worker/mix64.h"

namespace flotilla::worker {
namespace {

// Our own invariants (the engine's bugs, not a request's): print and abort, as a CHECK would.
void CheckOrDie(bool condition, const char* operation, const char* message) {
  if (!condition) {
    std::fprintf(stderr, "BlockManager::%s: %s\n", operation, message);
    std::abort();
  }
}

}  // namespace

// Note [Prefix caching]
// A block's hash is Mix(parent block's hash, the block's token ids), the first block's parent
// being a random per-process root, so equal hashes mean equal token prefixes up to the end of
// that block (vLLM's hash_block_tokens chains the same way). Only FULL blocks whose KV was
// computed are registered: a partial block is still being written. Lookups walk the chain from
// the first block and stop at the first miss.
//
// The hash is a 64-bit non-cryptographic one: accidental collisions are negligible (about 2^-64
// per pair), and the random root makes crafted ones impractical from outside the process.
// vLLM defaults to sha256 for the same reason across tenants; a cache_salt would enter the root.
//
// Eviction: blocks nobody holds sit in free_queue_. A freed cached block goes to the back, so the
// front holds the least recently used; a sequence's blocks are freed tail first, so between
// blocks freed together the deeper ones (useful only with the shallower ones) go first. A freed
// block with no hash goes to the front: it caches nothing, so it is reused before any cached
// block is evicted. A prefix hit on a free cached block takes it out of the queue (O(1) through
// the stored iterator).

BlockManager::BlockManager(int num_blocks, int block_size, bool enable_prefix_caching)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      enable_prefix_caching_(enable_prefix_caching),
      blocks_(num_blocks) {
  CheckOrDie(num_blocks > 0 && block_size > 0, "BlockManager",
             "expected num_blocks > 0 and block_size > 0");
  for (int32_t block_id = 0; block_id < num_blocks; ++block_id) {
    blocks_[block_id].free_position = free_queue_.insert(free_queue_.end(), block_id);
  }
}

double BlockManager::usage() const {
  return static_cast<double>(num_used_blocks()) / static_cast<double>(num_blocks_);
}

void BlockManager::ComputeBlockHashes(Sequence& sequence, int num_full_blocks) const {
  static const uint64_t kRootHash = [] {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  }();
  std::vector<uint64_t>& hashes = sequence.block_hashes;
  for (int block = static_cast<int>(hashes.size()); block < num_full_blocks; ++block) {
    uint64_t hash = block == 0 ? kRootHash : hashes[block - 1];
    for (int position = block * block_size_; position < (block + 1) * block_size_; ++position) {
      hash =
          Mix64(hash ^ (static_cast<uint64_t>(static_cast<uint32_t>(sequence.token_id(position))) +
                        0x9e3779b97f4a7c15ULL));
    }
    hashes.push_back(hash);
  }
}

std::vector<int32_t> BlockManager::FindPrefixBlocks(Sequence& sequence) {
  std::vector<int32_t> prefix_blocks;
  if (!enable_prefix_caching_ || sequence.num_tokens() == 0) return prefix_blocks;
  // At least one token must be computed to produce logits, so the last token never hits.
  const int max_hit_blocks = (sequence.num_tokens() - 1) / block_size_;
  ComputeBlockHashes(sequence, max_hit_blocks);
  for (int block = 0; block < max_hit_blocks; ++block) {
    auto found = cached_blocks_.find(sequence.block_hashes[block]);
    if (found == cached_blocks_.end()) break;
    prefix_blocks.push_back(found->second);
  }
  return prefix_blocks;
}

int BlockManager::ComputePrefixHit(Sequence& sequence) {
  if (!sequence.block_table.empty() || sequence.num_computed_tokens > 0) return 0;
  return static_cast<int>(FindPrefixBlocks(sequence).size()) * block_size_;
}

bool BlockManager::Allocate(Sequence& sequence, int num_new_tokens) {
  CheckOrDie(num_new_tokens >= 0, "Allocate", "expected num_new_tokens >= 0");
  const bool first_allocation = sequence.block_table.empty() && sequence.num_computed_tokens == 0;
  std::vector<int32_t> prefix_blocks;
  if (first_allocation) prefix_blocks = FindPrefixBlocks(sequence);
  const int num_computed_tokens = first_allocation
                                      ? static_cast<int>(prefix_blocks.size()) * block_size_
                                      : sequence.num_computed_tokens;
  const int num_held_blocks = first_allocation ? static_cast<int>(prefix_blocks.size())
                                               : static_cast<int>(sequence.block_table.size());
  const int num_needed_blocks =
      (num_computed_tokens + num_new_tokens + block_size_ - 1) / block_size_;
  const int num_fresh_blocks = std::max(0, num_needed_blocks - num_held_blocks);
  // A prefix hit on a block nobody holds takes it off the free queue too.
  int num_revived_blocks = 0;
  for (int32_t block_id : prefix_blocks) {
    if (blocks_[block_id].reference_count == 0) ++num_revived_blocks;
  }
  if (num_fresh_blocks + num_revived_blocks > num_free_blocks()) return false;

  if (first_allocation) {
    for (int32_t block_id : prefix_blocks) {
      if (blocks_[block_id].reference_count == 0) RemoveFromFreeQueue(block_id);
      ++blocks_[block_id].reference_count;
      sequence.block_table.push_back(block_id);
    }
    sequence.num_computed_tokens = num_computed_tokens;
    // What the API reports is the first admission's hit; a readmission after preemption
    // recomputes (or re-finds) KV the request already paid for.
    if (sequence.num_preemptions == 0) {
      sequence.num_cached_prompt_tokens =
          std::min(num_computed_tokens, sequence.num_prompt_tokens());
    }
    sequence.num_registered_blocks = static_cast<int>(prefix_blocks.size());
    if (enable_prefix_caching_) {
      prefix_cache_queries_ += sequence.num_tokens();
      prefix_cache_hits_ += num_computed_tokens;
    }
  }
  for (int block = 0; block < num_fresh_blocks; ++block) {
    const int32_t block_id = PopFreeBlock();
    blocks_[block_id].reference_count = 1;
    sequence.block_table.push_back(block_id);
  }
  return true;
}

void BlockManager::CacheFullBlocks(Sequence& sequence) {
  if (!enable_prefix_caching_) return;
  const int num_full_blocks = std::min(sequence.num_computed_tokens / block_size_,
                                       static_cast<int>(sequence.block_table.size()));
  if (num_full_blocks <= sequence.num_registered_blocks) return;
  ComputeBlockHashes(sequence, num_full_blocks);
  for (int block = sequence.num_registered_blocks; block < num_full_blocks; ++block) {
    const uint64_t hash = sequence.block_hashes[block];
    const int32_t block_id = sequence.block_table[block];
    // Another sequence may have computed the same prefix in the same steps: the first block
    // registered keeps the hash, this one stays a private copy (freed like an uncached block).
    if (blocks_[block_id].hash.has_value() || cached_blocks_.contains(hash)) continue;
    blocks_[block_id].hash = hash;
    cached_blocks_.emplace(hash, block_id);
  }
  sequence.num_registered_blocks = num_full_blocks;
}

void BlockManager::Free(Sequence& sequence) {
  // Tail first, so that among blocks freed together the deepest prefix is evicted first.
  for (auto block = sequence.block_table.rbegin(); block != sequence.block_table.rend(); ++block) {
    const int32_t block_id = *block;
    Block& state = blocks_[block_id];
    CheckOrDie(state.reference_count > 0, "Free", "block freed more often than allocated");
    if (--state.reference_count > 0) continue;
    state.free_position = state.hash.has_value()
                              ? free_queue_.insert(free_queue_.end(), block_id)
                              : free_queue_.insert(free_queue_.begin(), block_id);
  }
  sequence.block_table.clear();
  sequence.num_registered_blocks = 0;
}

int32_t BlockManager::PopFreeBlock() {
  CheckOrDie(!free_queue_.empty(), "PopFreeBlock", "no free block (Allocate checks first)");
  const int32_t block_id = free_queue_.front();
  free_queue_.pop_front();
  Block& state = blocks_[block_id];
  if (state.hash.has_value()) {
    cached_blocks_.erase(*state.hash);
    state.hash.reset();
  }
  return block_id;
}

void BlockManager::RemoveFromFreeQueue(int32_t block_id) {
  free_queue_.erase(blocks_[block_id].free_position);
}

}  // namespace flotilla::worker
