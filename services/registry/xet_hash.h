// The hashes of the Xet protocol (https://huggingface.co/docs/xet, "Hashing Methods"): chunk hashes,
// the aggregated Merkle tree that names xorbs and files, term verification hashes, the keyed
// hashes of global dedup, and the hash string form the CAS API uses (four little-endian u64s).
// All are BLAKE3 keyed hashes (blake3.h) under the keys the specification fixes.
//
//   XetHash chunk = XetChunkHash(chunk_bytes);
//   XetHash file = XetFileHash({{chunk, chunk_bytes.size()}});
//   std::string text = XetHashToString(file);  // what X-Xet-Hash carries
//
// Thread-safety: pure functions.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/strings/string_view.h>

namespace flotilla::registry {

using XetHash = std::array<uint8_t, 32>;

// A hash and the number of bytes it covers: a chunk, or a subtree of chunks.
struct XetHashAndSize {
  XetHash hash;
  uint64_t size;
};

// The hash string: each 8-byte group read as a little-endian u64, printed as 16 lowercase hex
// digits (so it is not the plain hex of the bytes).
std::string XetHashToString(const XetHash& hash);
// Inverse of XetHashToString; INVALID_ARGUMENT unless exactly 64 hex digits.
absl::StatusOr<XetHash> XetHashFromString(absl::string_view text);

// The last 8 bytes read as a little-endian u64 (the Merkle cut rule and dedup eligibility use it).
uint64_t XetHashTailWord(const XetHash& hash);

XetHash XetChunkHash(const uint8_t* data, size_t size);
inline XetHash XetChunkHash(absl::string_view data) {
  return XetChunkHash(reinterpret_cast<const uint8_t*>(data.data()), data.size());
}

// The root of the aggregated Merkle tree over (hash, size) leaves; 32 zero bytes when empty.
XetHash XetMerkleRoot(std::vector<XetHashAndSize> leaves);
// A xorb is named by the Merkle root of its chunks.
inline XetHash XetXorbHash(std::vector<XetHashAndSize> chunks) { return XetMerkleRoot(std::move(chunks)); }
// A file: the Merkle root of its chunks, hashed once more under the zero key; 32 zero bytes for
// an empty file (as hf_xet does).
XetHash XetFileHash(std::vector<XetHashAndSize> chunks);
// The verification hash of a term: the raw chunk hashes of [begin, end) concatenated.
XetHash XetVerificationHash(const std::vector<XetHash>& chunk_hashes, size_t begin, size_t end);
// keyed_hash(key, chunk_hash): how global dedup answers hide chunk hashes.
XetHash XetKeyedChunkHash(const XetHash& key, const XetHash& chunk_hash);

// A chunk may be queried through global dedup when it starts a file or its tail word is a
// multiple of 1024.
inline bool XetGlobalDedupEligible(const XetHash& chunk_hash, bool first_chunk_of_file) {
  return first_chunk_of_file || XetHashTailWord(chunk_hash) % 1024 == 0;
}

}  // namespace flotilla::registry
