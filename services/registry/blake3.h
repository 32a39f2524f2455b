// BLAKE3, written from its specification (https://github.com/BLAKE3-team/BLAKE3-specs): the plain
// hash, the keyed hash and key derivation, with 32-byte output. The Xet protocol hashes every chunk,
// Merkle node and file with BLAKE3 keyed by a per-purpose key (see xet_hash.h); Debian 12 packages
// no BLAKE3 library, so it lives here. Portable C++, eight chunks at once with AVX2 and sixteen with
// AVX-512 where the CPU has them (Notes [BLAKE3 with AVX2], [BLAKE3 with AVX-512] in blake3.cc);
// all give the same bytes.
//
//   Blake3Hasher hasher = Blake3Hasher::Keyed(key);
//   hasher.Update(data);
//   std::array<uint8_t, 32> digest = hasher.Finalize();
//
// Thread-safety: a Blake3Hasher is a value with no shared state; use one per thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include <absl/strings/string_view.h>

namespace flotilla::registry {

using Blake3Digest = std::array<uint8_t, 32>;
using Blake3Key = std::array<uint8_t, 32>;

class Blake3Hasher {
 public:
  // The plain hash (no key).
  Blake3Hasher();
  // The keyed hash: a MAC / domain-separated hash under a 32-byte key.
  static Blake3Hasher Keyed(const Blake3Key& key);
  // Key derivation: `context` is a hard-coded, globally unique string; the key material is fed
  // with Update().
  static Blake3Hasher DeriveKey(absl::string_view context);

  void Update(const uint8_t* data, size_t size);
  void Update(absl::string_view data) {
    Update(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  // The first 32 bytes of the root output; the hasher may keep being updated afterwards.
  Blake3Digest Finalize() const;

 private:
  Blake3Hasher(const uint32_t key_words[8], uint32_t flags);

  // The chunk being filled (1024 bytes, in 64-byte blocks).
  struct ChunkState {
    uint32_t chaining_value[8];
    uint64_t chunk_counter = 0;
    uint8_t block[64] = {};
    uint8_t block_length = 0;
    uint8_t blocks_compressed = 0;
    size_t Length() const { return 64 * size_t{blocks_compressed} + block_length; }
  };

  void ResetChunk(uint64_t chunk_counter);
  void UpdateChunk(const uint8_t* data, size_t size);
  void PushChunkChainingValue(const uint32_t chaining_value[8], uint64_t total_chunks);

  uint32_t key_words_[8];
  uint32_t flags_;
  ChunkState chunk_;
  // Chaining values of completed subtrees, one per set bit of the chunk count (at most 54).
  uint32_t stack_[54][8];
  int stack_size_ = 0;
};

// Allows (the default) or forbids the AVX2 path, for tests and benchmarks that compare it with the
// portable one; returns whether the AVX2 path is now in use (false on CPUs without AVX2).
bool Blake3AllowSimd(bool allowed);
// Allows (the default) or forbids the sixteen-lane AVX-512 path alone (the AVX2 path stays, if
// allowed); returns whether the AVX-512 path is now in use (false on CPUs without AVX-512F).
bool Blake3AllowAvx512(bool allowed);

// One-shot helpers.
Blake3Digest Blake3(absl::string_view data);
Blake3Digest Blake3Keyed(const Blake3Key& key, const uint8_t* data, size_t size);
inline Blake3Digest Blake3Keyed(const Blake3Key& key, absl::string_view data) {
  return Blake3Keyed(key, reinterpret_cast<const uint8_t*>(data.data()), data.size());
}
Blake3Digest Blake3DeriveKey(absl::string_view context, absl::string_view key_material);

}  // namespace flotilla::registry
