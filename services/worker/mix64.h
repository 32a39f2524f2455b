// splitmix64's finaliser: a bijective 64-bit mix with full avalanche. The block manager chains
// prefix-cache hashes with it; the sampler derives each token's draw from (seed, position) with it.
//
//   uint64_t hash = Mix64(parent_hash ^ token_id);
//
// Thread-safety: a pure function.
#pragma once

#include <cstdint>

namespace flotilla::worker {

inline uint64_t Mix64(uint64_t value) {
  value ^= value >> 30;
  value *= 0xbf58476d1ce4e5b9ULL;
  value ^= value >> 27;
  value *= 0x94d049bb133111ebULL;
  value ^= value >> 31;
  return value;
}

}  // namespace flotilla::worker
