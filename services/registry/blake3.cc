// BLAKE3 from the specification: section numbers below refer to the BLAKE3 paper
// (https://github.com/BLAKE3-team/BLAKE3-specs/blob/master/blake3.pdf).
#include "services/registry/blake3.h"

#include <algorithm>
#include <cstring>

namespace flotilla::registry {
namespace {

// The IV is SHA-256's (section 2.1).
constexpr uint32_t kIv[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                             0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};
constexpr uint8_t kMessagePermutation[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};

// Domain flags (section 2.1, table 3).
constexpr uint32_t kChunkStart = 1 << 0;
constexpr uint32_t kChunkEnd = 1 << 1;
constexpr uint32_t kParent = 1 << 2;
constexpr uint32_t kRoot = 1 << 3;
constexpr uint32_t kKeyedHash = 1 << 4;
constexpr uint32_t kDeriveKeyContext = 1 << 5;
constexpr uint32_t kDeriveKeyMaterial = 1 << 6;

constexpr size_t kBlockLength = 64;
constexpr size_t kChunkLength = 1024;

inline uint32_t RotateRight(uint32_t value, int bits) { return (value >> bits) | (value << (32 - bits)); }

inline void G(uint32_t state[16], int a, int b, int c, int d, uint32_t message_x, uint32_t message_y) {
  state[a] = state[a] + state[b] + message_x;
  state[d] = RotateRight(state[d] ^ state[a], 16);
  state[c] = state[c] + state[d];
  state[b] = RotateRight(state[b] ^ state[c], 12);
  state[a] = state[a] + state[b] + message_y;
  state[d] = RotateRight(state[d] ^ state[a], 8);
  state[c] = state[c] + state[d];
  state[b] = RotateRight(state[b] ^ state[c], 7);
}

inline void Round(uint32_t state[16], const uint32_t message[16]) {
  // Columns, then diagonals.
  G(state, 0, 4, 8, 12, message[0], message[1]);
  G(state, 1, 5, 9, 13, message[2], message[3]);
  G(state, 2, 6, 10, 14, message[4], message[5]);
  G(state, 3, 7, 11, 15, message[6], message[7]);
  G(state, 0, 5, 10, 15, message[8], message[9]);
  G(state, 1, 6, 11, 12, message[10], message[11]);
  G(state, 2, 7, 8, 13, message[12], message[13]);
  G(state, 3, 4, 9, 14, message[14], message[15]);
}

// The compression function (section 2.2): 16 output words.
void Compress(const uint32_t chaining_value[8], const uint32_t block_words[16], uint64_t counter,
              uint32_t block_length, uint32_t flags, uint32_t out[16]) {
  uint32_t state[16] = {chaining_value[0], chaining_value[1], chaining_value[2], chaining_value[3],
                        chaining_value[4], chaining_value[5], chaining_value[6], chaining_value[7],
                        kIv[0], kIv[1], kIv[2], kIv[3],
                        static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                        block_length, flags};
  uint32_t message[16];
  std::memcpy(message, block_words, sizeof(message));
  for (int round = 0; round < 7; ++round) {
    Round(state, message);
    if (round == 6) break;
    uint32_t permuted[16];
    for (int i = 0; i < 16; ++i) permuted[i] = message[kMessagePermutation[i]];
    std::memcpy(message, permuted, sizeof(message));
  }
  for (int i = 0; i < 8; ++i) {
    out[i] = state[i] ^ state[i + 8];
    out[i + 8] = state[i + 8] ^ chaining_value[i];
  }
}

inline void WordsFromLittleEndian(const uint8_t* bytes, size_t word_count, uint32_t* words) {
  for (size_t i = 0; i < word_count; ++i) {
    words[i] = uint32_t{bytes[4 * i]} | uint32_t{bytes[4 * i + 1]} << 8 |
               uint32_t{bytes[4 * i + 2]} << 16 | uint32_t{bytes[4 * i + 3]} << 24;
  }
}

// What the last compression of a node needs, kept so the root can be produced with kRoot.
struct Output {
  uint32_t input_chaining_value[8];
  uint32_t block_words[16];
  uint64_t counter;
  uint32_t block_length;
  uint32_t flags;

  void ChainingValue(uint32_t out[8]) const {
    uint32_t words[16];
    Compress(input_chaining_value, block_words, counter, block_length, flags, words);
    std::memcpy(out, words, 8 * sizeof(uint32_t));
  }
  Blake3Digest RootBytes() const {
    uint32_t words[16];
    Compress(input_chaining_value, block_words, /*counter=*/0, block_length, flags | kRoot, words);
    Blake3Digest digest;
    for (int i = 0; i < 8; ++i) {
      digest[4 * i] = static_cast<uint8_t>(words[i]);
      digest[4 * i + 1] = static_cast<uint8_t>(words[i] >> 8);
      digest[4 * i + 2] = static_cast<uint8_t>(words[i] >> 16);
      digest[4 * i + 3] = static_cast<uint8_t>(words[i] >> 24);
    }
    return digest;
  }
};

Output ParentOutput(const uint32_t left[8], const uint32_t right[8], const uint32_t key_words[8],
                    uint32_t flags) {
  Output output;
  std::memcpy(output.input_chaining_value, key_words, 8 * sizeof(uint32_t));
  std::memcpy(output.block_words, left, 8 * sizeof(uint32_t));
  std::memcpy(output.block_words + 8, right, 8 * sizeof(uint32_t));
  output.counter = 0;
  output.block_length = kBlockLength;
  output.flags = kParent | flags;
  return output;
}

}  // namespace

Blake3Hasher::Blake3Hasher() : Blake3Hasher(kIv, 0) {}

Blake3Hasher::Blake3Hasher(const uint32_t key_words[8], uint32_t flags) : flags_(flags) {
  std::memcpy(key_words_, key_words, sizeof(key_words_));
  ResetChunk(0);
}

Blake3Hasher Blake3Hasher::Keyed(const Blake3Key& key) {
  uint32_t key_words[8];
  WordsFromLittleEndian(key.data(), 8, key_words);
  return Blake3Hasher(key_words, kKeyedHash);
}

Blake3Hasher Blake3Hasher::DeriveKey(absl::string_view context) {
  Blake3Hasher context_hasher(kIv, kDeriveKeyContext);
  context_hasher.Update(context);
  Blake3Digest context_key = context_hasher.Finalize();
  uint32_t key_words[8];
  WordsFromLittleEndian(context_key.data(), 8, key_words);
  return Blake3Hasher(key_words, kDeriveKeyMaterial);
}

void Blake3Hasher::ResetChunk(uint64_t chunk_counter) {
  std::memcpy(chunk_.chaining_value, key_words_, sizeof(key_words_));
  chunk_.chunk_counter = chunk_counter;
  std::memset(chunk_.block, 0, sizeof(chunk_.block));
  chunk_.block_length = 0;
  chunk_.blocks_compressed = 0;
}

void Blake3Hasher::UpdateChunk(const uint8_t* data, size_t size) {
  while (size > 0) {
    // A full block is compressed only when more input follows: the chunk's last block needs
    // kChunkEnd, which only Finalize (or the next chunk) knows.
    if (chunk_.block_length == kBlockLength) {
      uint32_t block_words[16];
      WordsFromLittleEndian(chunk_.block, 16, block_words);
      uint32_t flags = flags_ | (chunk_.blocks_compressed == 0 ? kChunkStart : 0);
      uint32_t out[16];
      Compress(chunk_.chaining_value, block_words, chunk_.chunk_counter, kBlockLength, flags, out);
      std::memcpy(chunk_.chaining_value, out, 8 * sizeof(uint32_t));
      ++chunk_.blocks_compressed;
      std::memset(chunk_.block, 0, sizeof(chunk_.block));
      chunk_.block_length = 0;
    }
    size_t take = std::min(kBlockLength - chunk_.block_length, size);
    std::memcpy(chunk_.block + chunk_.block_length, data, take);
    chunk_.block_length = static_cast<uint8_t>(chunk_.block_length + take);
    data += take;
    size -= take;
  }
}

void Blake3Hasher::PushChunkChainingValue(const uint32_t chaining_value[8], uint64_t total_chunks) {
  // Merge completed subtrees: each trailing zero bit of the chunk count closes one (section 5.1.2).
  uint32_t current[8];
  std::memcpy(current, chaining_value, sizeof(current));
  while ((total_chunks & 1) == 0) {
    --stack_size_;
    ParentOutput(stack_[stack_size_], current, key_words_, flags_).ChainingValue(current);
    total_chunks >>= 1;
  }
  std::memcpy(stack_[stack_size_], current, sizeof(current));
  ++stack_size_;
}

void Blake3Hasher::Update(const uint8_t* data, size_t size) {
  while (size > 0) {
    if (chunk_.Length() == kChunkLength) {
      Output chunk_output;
      std::memcpy(chunk_output.input_chaining_value, chunk_.chaining_value, sizeof(chunk_.chaining_value));
      WordsFromLittleEndian(chunk_.block, 16, chunk_output.block_words);
      chunk_output.counter = chunk_.chunk_counter;
      chunk_output.block_length = chunk_.block_length;
      chunk_output.flags = flags_ | kChunkEnd | (chunk_.blocks_compressed == 0 ? kChunkStart : 0);
      uint32_t chunk_chaining_value[8];
      chunk_output.ChainingValue(chunk_chaining_value);
      uint64_t total_chunks = chunk_.chunk_counter + 1;
      PushChunkChainingValue(chunk_chaining_value, total_chunks);
      ResetChunk(total_chunks);
    }
    size_t take = std::min(kChunkLength - chunk_.Length(), size);
    UpdateChunk(data, take);
    data += take;
    size -= take;
  }
}

Blake3Digest Blake3Hasher::Finalize() const {
  Output output;
  std::memcpy(output.input_chaining_value, chunk_.chaining_value, sizeof(chunk_.chaining_value));
  WordsFromLittleEndian(chunk_.block, 16, output.block_words);
  output.counter = chunk_.chunk_counter;
  output.block_length = chunk_.block_length;
  output.flags = flags_ | kChunkEnd | (chunk_.blocks_compressed == 0 ? kChunkStart : 0);
  for (int index = stack_size_ - 1; index >= 0; --index) {
    uint32_t right[8];
    output.ChainingValue(right);
    output = ParentOutput(stack_[index], right, key_words_, flags_);
  }
  return output.RootBytes();
}

Blake3Digest Blake3(absl::string_view data) {
  Blake3Hasher hasher;
  hasher.Update(data);
  return hasher.Finalize();
}

Blake3Digest Blake3Keyed(const Blake3Key& key, const uint8_t* data, size_t size) {
  Blake3Hasher hasher = Blake3Hasher::Keyed(key);
  hasher.Update(data, size);
  return hasher.Finalize();
}

Blake3Digest Blake3DeriveKey(absl::string_view context, absl::string_view key_material) {
  Blake3Hasher hasher = Blake3Hasher::DeriveKey(context);
  hasher.Update(key_material);
  return hasher.Finalize();
}

}  // namespace flotilla::registry
