// Content-defined chunking of the Xet protocol (https://huggingface.co/docs/xet, "Content-Defined
// Chunking"): a Gearhash rolling hash cuts a byte stream into chunks of 8 to 128 KiB (64 KiB on
// average) at positions that depend only on nearby content, so an edit moves only the boundaries
// around it and the other chunks deduplicate. The boundaries equal hf_xet's (checked in
// xet_hash_test.cc against values hf_xet produced).
//
//   XetChunker chunker;
//   std::vector<uint64_t> ends;
//   chunker.Feed(buffer, size, &ends);   // any number of times, any buffer sizes
//   chunker.Finish(&ends);               // the last, possibly short, chunk
//   // ends = absolute end offsets of each chunk in the stream
//
// Thread-safety: a XetChunker is a value; one per stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "services/registry/xet_hash.h"

namespace flotilla::registry {

inline constexpr uint64_t kXetMinChunkSize = 8 * 1024;
inline constexpr uint64_t kXetTargetChunkSize = 64 * 1024;
inline constexpr uint64_t kXetMaxChunkSize = 128 * 1024;

class XetChunker {
 public:
  // Appends the end offset (from the start of the stream) of each chunk completed inside `data`.
  void Feed(const uint8_t* data, size_t size, std::vector<uint64_t>* boundaries);
  // Ends the stream: appends the last chunk's end if any bytes are pending; returns whether it did.
  bool Finish(std::vector<uint64_t>* boundaries);

 private:
  uint64_t rolling_hash_ = 0;
  uint64_t current_chunk_size_ = 0;
  uint64_t offset_ = 0;  // end of the last completed chunk
};

// The chunk end offsets of a whole buffer (empty for an empty buffer).
std::vector<uint64_t> XetChunkBoundaries(const uint8_t* data, size_t size);
// The chunks of a whole buffer with their hashes.
std::vector<XetHashAndSize> XetChunkHashes(const uint8_t* data, size_t size);

}  // namespace flotilla::registry
