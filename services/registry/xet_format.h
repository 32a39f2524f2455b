// The Xet protocol's binary objects (https://huggingface.co/docs/xet, "Xorb Format", "Shard
// Format"), read and checked on the server side:
//  - a xorb: compressed chunks (8-byte header each; None, LZ4 frame, or byte-grouped LZ4) and an
//    optional CasObjectInfo footer. ParseXorb decompresses every chunk, recomputes every chunk hash
//    and the xorb hash, and refuses the xorb unless the hash it was uploaded under matches.
//  - a shard (as uploaded: header, file info section, CAS info section, no footer): the files'
//    reconstructions (terms naming xorb chunk ranges), their verification hashes and sha256.
//  - WriteUncompressedXorb builds a xorb for bytes the registry received another way (a
//    `flotilla push` or an LFS upload), so those files can be downloaded through Xet too.
//
//   absl::StatusOr<ParsedXorb> xorb = ParseXorb(body, expected_hash);   // INVALID_ARGUMENT on any mismatch
//   absl::StatusOr<std::string> chunk = DecodeXorbChunk(xorb_bytes, begin, end);
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/strings/string_view.h>

#include "services/registry/xet_hash.h"

namespace flotilla::registry {

// Limits from the specification: a serialized xorb holds at most 64 MiB of chunk data and 8192
// chunks; a chunk is at most 128 KiB uncompressed.
inline constexpr uint64_t kXetMaxXorbBytes = 64ull << 20;
inline constexpr uint64_t kXetMaxXorbChunks = 8192;

struct ParsedXorb {
  XetHash hash;
  std::vector<XetHash> chunk_hashes;
  // End offset of each chunk (header included) in the serialized data, and in the unpacked stream.
  std::vector<uint32_t> packed_ends;
  std::vector<uint32_t> unpacked_ends;
  uint64_t data_size = 0;  // bytes of the chunk data region (the footer excluded)
};

// Parses and verifies a serialized xorb uploaded as `expected_hash`. INVALID_ARGUMENT naming the
// chunk and the expected and actual values for a bad header, a size past the limits, a
// decompression failure, a footer that disagrees, or a hash mismatch.
absl::StatusOr<ParsedXorb> ParseXorb(absl::string_view serialized, const XetHash& expected_hash);

// Decompresses one chunk whose header starts `data` (the chunk data region from its start).
// `consumed` receives header + payload bytes.
absl::StatusOr<std::string> DecodeXorbChunk(absl::string_view data, size_t* consumed);

// Serializes chunks without compression (type None) and with no footer: what the registry stores
// for bytes it chunked itself. `chunk_ends` are end offsets into `data`.
std::string WriteUncompressedXorb(absl::string_view data, const std::vector<uint64_t>& chunk_ends);
// Appends one chunk, uncompressed, to a xorb being built.
void AppendUncompressedChunk(std::string* xorb, absl::string_view chunk);

struct ShardTerm {
  XetHash xorb_hash;
  uint32_t unpacked_bytes = 0;
  uint32_t chunk_begin = 0;
  uint32_t chunk_end = 0;  // exclusive
};

struct ShardFile {
  XetHash file_hash;
  std::vector<ShardTerm> terms;
  std::vector<XetHash> verification_hashes;  // one per term, or empty
  std::optional<std::string> sha256;         // lowercase hex, from the metadata extension
};

struct ShardXorbChunk {
  XetHash chunk_hash;
  uint32_t byte_range_start = 0;
  uint32_t unpacked_bytes = 0;
  uint32_t flags = 0;
};

struct ShardXorb {
  XetHash xorb_hash;
  uint32_t unpacked_bytes = 0;
  uint32_t serialized_bytes = 0;
  std::vector<ShardXorbChunk> chunks;
};

struct ParsedShard {
  std::vector<ShardFile> files;
  std::vector<ShardXorb> xorbs;
};

// A shard answering a global dedup query: no files, the CAS blocks of `xorbs` with every chunk hash
// replaced by keyed_hash(key, chunk hash) (so only a client holding the chunk can match it), the
// lookup tables and the 200-byte footer carrying `key`, as hf_xet reads a stored shard.
std::string WriteDedupShard(const std::vector<ShardXorb>& xorbs, const XetHash& key, uint64_t expiry_unix_seconds);

// Parses an uploaded shard (footer optional and ignored). INVALID_ARGUMENT for a wrong magic or
// version, a truncated section, a missing bookend or counts past the data.
absl::StatusOr<ParsedShard> ParseShard(absl::string_view serialized);

}  // namespace flotilla::registry
