#include "services/registry/xet_hash.h"

#include <algorithm>
#include <cstring>

#include <absl/status/status.h>
#include <absl/strings/str_cat.h>

#include "services/registry/blake3.h"

namespace flotilla::registry {
namespace {

// Keys from the specification's "Hashing Methods" section.
constexpr Blake3Key kDataKey = {0x66, 0x97, 0xf5, 0x77, 0x5b, 0x95, 0x50, 0xde, 0x31, 0x35, 0xcb,
                                0xac, 0xa5, 0x97, 0x18, 0x1c, 0x9d, 0xe4, 0x21, 0x10, 0x9b, 0xeb,
                                0x2b, 0x58, 0xb4, 0xd0, 0xb0, 0x4b, 0x93, 0xad, 0xf2, 0x29};
constexpr Blake3Key kInternalNodeKey = {0x01, 0x7e, 0xc5, 0xc7, 0xa5, 0x47, 0x29, 0x96, 0xfd, 0x94, 0x66,
                                        0x66, 0xb4, 0x8a, 0x02, 0xe6, 0x5d, 0xdd, 0x53, 0x6f, 0x37, 0xc7,
                                        0x6d, 0xd2, 0xf8, 0x63, 0x52, 0xe6, 0x4a, 0x53, 0x71, 0x3f};
constexpr Blake3Key kVerificationKey = {0x7f, 0x18, 0x57, 0xd6, 0xce, 0x56, 0xed, 0x66, 0x12, 0x7f, 0xf9,
                                        0x13, 0xe7, 0xa5, 0xc3, 0xf3, 0xa4, 0xcd, 0x26, 0xd5, 0xb5, 0xdb,
                                        0x49, 0xe6, 0x41, 0x24, 0x98, 0x7f, 0x28, 0xfb, 0x94, 0xc3};
constexpr Blake3Key kZeroKey = {};

// The Merkle tree's branching: a node closes after at least 3 children when a child's tail word is
// a multiple of 4, and always at 9 children.
constexpr uint64_t kMeanBranchingFactor = 4;
constexpr size_t kMaxChildren = 2 * kMeanBranchingFactor + 1;

uint64_t ReadLittleEndian64(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

size_t NextMergeCut(const XetHashAndSize* entries, size_t count) {
  if (count <= 2) return count;
  size_t end = std::min(kMaxChildren, count);
  for (size_t index = 2; index < end; ++index) {
    if (XetHashTailWord(entries[index].hash) % kMeanBranchingFactor == 0) return index + 1;
  }
  return end;
}

XetHashAndSize MergeSequence(const XetHashAndSize* entries, size_t count) {
  std::string buffer;
  buffer.reserve(count * 80);
  uint64_t total_size = 0;
  for (size_t index = 0; index < count; ++index) {
    absl::StrAppend(&buffer, XetHashToString(entries[index].hash), " : ", entries[index].size, "\n");
    total_size += entries[index].size;
  }
  return {Blake3Keyed(kInternalNodeKey, buffer), total_size};
}

}  // namespace

std::string XetHashToString(const XetHash& hash) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text(64, '0');
  for (int word = 0; word < 4; ++word) {
    uint64_t value = ReadLittleEndian64(hash.data() + 8 * word);
    for (int digit = 15; digit >= 0; --digit) {
      text[16 * word + digit] = kDigits[value & 0xf];
      value >>= 4;
    }
  }
  return text;
}

absl::StatusOr<XetHash> XetHashFromString(absl::string_view text) {
  if (text.size() != 64) {
    return absl::InvalidArgumentError(absl::StrCat("parse Xet hash '", text.substr(0, 80),
                                                   "': expected 64 hex digits but got ", text.size(),
                                                   " characters"));
  }
  XetHash hash;
  for (int word = 0; word < 4; ++word) {
    uint64_t value = 0;
    for (int digit = 0; digit < 16; ++digit) {
      char character = text[16 * word + digit];
      int nibble;
      if (character >= '0' && character <= '9') {
        nibble = character - '0';
      } else if (character >= 'a' && character <= 'f') {
        nibble = character - 'a' + 10;
      } else if (character >= 'A' && character <= 'F') {
        nibble = character - 'A' + 10;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("parse Xet hash '", text, "': expected hex digits but found '",
                         std::string(1, character), "' at ", 16 * word + digit));
      }
      value = (value << 4) | static_cast<uint64_t>(nibble);
    }
    for (int byte = 0; byte < 8; ++byte) hash[8 * word + byte] = static_cast<uint8_t>(value >> (8 * byte));
  }
  return hash;
}

uint64_t XetHashTailWord(const XetHash& hash) { return ReadLittleEndian64(hash.data() + 24); }

XetHash XetChunkHash(const uint8_t* data, size_t size) { return Blake3Keyed(kDataKey, data, size); }

XetHash XetMerkleRoot(std::vector<XetHashAndSize> leaves) {
  if (leaves.empty()) return XetHash{};
  while (leaves.size() > 1) {
    size_t write_index = 0;
    size_t read_index = 0;
    while (read_index < leaves.size()) {
      size_t cut = NextMergeCut(leaves.data() + read_index, leaves.size() - read_index);
      leaves[write_index++] = MergeSequence(leaves.data() + read_index, cut);
      read_index += cut;
    }
    leaves.resize(write_index);
  }
  return leaves[0].hash;
}

XetHash XetFileHash(std::vector<XetHashAndSize> chunks) {
  // An empty file is named by 32 zero bytes: that is what hf_xet sends and expects (the
  // specification's text would give keyed_hash(zero key, zero hash) instead).
  if (chunks.empty()) return XetHash{};
  XetHash root = XetMerkleRoot(std::move(chunks));
  return Blake3Keyed(kZeroKey, root.data(), root.size());
}

XetHash XetVerificationHash(const std::vector<XetHash>& chunk_hashes, size_t begin, size_t end) {
  Blake3Hasher hasher = Blake3Hasher::Keyed(kVerificationKey);
  for (size_t index = begin; index < end && index < chunk_hashes.size(); ++index) {
    hasher.Update(chunk_hashes[index].data(), chunk_hashes[index].size());
  }
  return hasher.Finalize();
}

XetHash XetKeyedChunkHash(const XetHash& key, const XetHash& chunk_hash) {
  return Blake3Keyed(key, chunk_hash.data(), chunk_hash.size());
}

}  // namespace flotilla::registry
