// BLAKE3 from the specification: section numbers below refer to the BLAKE3 paper
// (https://github.com/BLAKE3-team/BLAKE3-specs/blob/master/blake3.pdf).
#include "services/registry/blake3.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace flotilla::registry {
namespace {

// The IV is SHA-256's (section 2.1).
constexpr uint32_t kIv[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                             0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};
// The message word order of each of the 7 rounds: round r uses the permutation applied r times
// (section 2.2), tabulated so no round copies the message.
constexpr uint8_t kMessageSchedule[7][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};

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

// The compression function (section 2.2): 16 output words. The state lives in 16 locals so the
// compiler keeps it in registers (an indexed array spills, and runs at a third of the speed).
inline void Compress(const uint32_t chaining_value[8], const uint32_t block_words[16], uint64_t counter,
                     uint32_t block_length, uint32_t flags, uint32_t out[16]) {
  uint32_t v0 = chaining_value[0], v1 = chaining_value[1], v2 = chaining_value[2], v3 = chaining_value[3];
  uint32_t v4 = chaining_value[4], v5 = chaining_value[5], v6 = chaining_value[6], v7 = chaining_value[7];
  uint32_t v8 = kIv[0], v9 = kIv[1], v10 = kIv[2], v11 = kIv[3];
  uint32_t v12 = static_cast<uint32_t>(counter), v13 = static_cast<uint32_t>(counter >> 32);
  uint32_t v14 = block_length, v15 = flags;
#define FLOTILLA_BLAKE3_G(a, b, c, d, x, y) \
  a = a + b + (x);                           \
  d = RotateRight(d ^ a, 16);                \
  c = c + d;                                 \
  b = RotateRight(b ^ c, 12);                \
  a = a + b + (y);                           \
  d = RotateRight(d ^ a, 8);                 \
  c = c + d;                                 \
  b = RotateRight(b ^ c, 7);
  for (int round = 0; round < 7; ++round) {
    const uint8_t* schedule = kMessageSchedule[round];
    // Columns, then diagonals.
    FLOTILLA_BLAKE3_G(v0, v4, v8, v12, block_words[schedule[0]], block_words[schedule[1]]);
    FLOTILLA_BLAKE3_G(v1, v5, v9, v13, block_words[schedule[2]], block_words[schedule[3]]);
    FLOTILLA_BLAKE3_G(v2, v6, v10, v14, block_words[schedule[4]], block_words[schedule[5]]);
    FLOTILLA_BLAKE3_G(v3, v7, v11, v15, block_words[schedule[6]], block_words[schedule[7]]);
    FLOTILLA_BLAKE3_G(v0, v5, v10, v15, block_words[schedule[8]], block_words[schedule[9]]);
    FLOTILLA_BLAKE3_G(v1, v6, v11, v12, block_words[schedule[10]], block_words[schedule[11]]);
    FLOTILLA_BLAKE3_G(v2, v7, v8, v13, block_words[schedule[12]], block_words[schedule[13]]);
    FLOTILLA_BLAKE3_G(v3, v4, v9, v14, block_words[schedule[14]], block_words[schedule[15]]);
  }
#undef FLOTILLA_BLAKE3_G
  out[0] = v0 ^ v8;
  out[1] = v1 ^ v9;
  out[2] = v2 ^ v10;
  out[3] = v3 ^ v11;
  out[4] = v4 ^ v12;
  out[5] = v5 ^ v13;
  out[6] = v6 ^ v14;
  out[7] = v7 ^ v15;
  out[8] = v8 ^ chaining_value[0];
  out[9] = v9 ^ chaining_value[1];
  out[10] = v10 ^ chaining_value[2];
  out[11] = v11 ^ chaining_value[3];
  out[12] = v12 ^ chaining_value[4];
  out[13] = v13 ^ chaining_value[5];
  out[14] = v14 ^ chaining_value[6];
  out[15] = v15 ^ chaining_value[7];
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

// Note [BLAKE3 with AVX2]: the chunks of a tree are independent until their chaining values
// merge, so eight whole chunks (8 KiB) are compressed at once, one per 32-bit lane of eight AVX2
// registers that hold the 16 state words: the same compression function, block by block, with the
// message words transposed across the eight chunks. Used for runs of whole chunks that are not the
// input's last (the last chunk may be the root, and is finished by Finalize), when the CPU has
// AVX2; everything else, and CPUs without it, take Compress above. The published test vectors
// (inputs of 16, 31 and 100 KiB) and incremental updates of every size check both paths.
constexpr size_t kSimdChunks = 8;

#if defined(__x86_64__)
__attribute__((target("avx2"))) inline __m256i Rotate16(__m256i value) {
  const __m256i shuffle = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
                                           2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  return _mm256_shuffle_epi8(value, shuffle);
}
__attribute__((target("avx2"))) inline __m256i Rotate8(__m256i value) {
  const __m256i shuffle = _mm256_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12,
                                           1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12);
  return _mm256_shuffle_epi8(value, shuffle);
}
__attribute__((target("avx2"))) inline __m256i Rotate12(__m256i value) {
  return _mm256_or_si256(_mm256_srli_epi32(value, 12), _mm256_slli_epi32(value, 20));
}
__attribute__((target("avx2"))) inline __m256i Rotate7(__m256i value) {
  return _mm256_or_si256(_mm256_srli_epi32(value, 7), _mm256_slli_epi32(value, 25));
}

// Words 0-7 of the 32 bytes at `start` in each of the eight chunks (1024 bytes apart), transposed:
// words[w] holds word w of chunk 0 … 7 in its lanes. Loads and an 8×8 transpose (unpacks, then
// swapping 128-bit halves) are cheaper than gathering each word across the chunks.
__attribute__((target("avx2"))) inline void LoadTransposed(const uint8_t* start, __m256i words[8]) {
  __m256i rows[8];
  for (int lane = 0; lane < 8; ++lane) {
    rows[lane] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start + lane * kChunkLength));
  }
  const __m256i pairs_low_01 = _mm256_unpacklo_epi32(rows[0], rows[1]);
  const __m256i pairs_high_01 = _mm256_unpackhi_epi32(rows[0], rows[1]);
  const __m256i pairs_low_23 = _mm256_unpacklo_epi32(rows[2], rows[3]);
  const __m256i pairs_high_23 = _mm256_unpackhi_epi32(rows[2], rows[3]);
  const __m256i pairs_low_45 = _mm256_unpacklo_epi32(rows[4], rows[5]);
  const __m256i pairs_high_45 = _mm256_unpackhi_epi32(rows[4], rows[5]);
  const __m256i pairs_low_67 = _mm256_unpacklo_epi32(rows[6], rows[7]);
  const __m256i pairs_high_67 = _mm256_unpackhi_epi32(rows[6], rows[7]);
  const __m256i quads_0_of_0123 = _mm256_unpacklo_epi64(pairs_low_01, pairs_low_23);   // words 0 and 4
  const __m256i quads_1_of_0123 = _mm256_unpackhi_epi64(pairs_low_01, pairs_low_23);   // words 1 and 5
  const __m256i quads_2_of_0123 = _mm256_unpacklo_epi64(pairs_high_01, pairs_high_23); // words 2 and 6
  const __m256i quads_3_of_0123 = _mm256_unpackhi_epi64(pairs_high_01, pairs_high_23); // words 3 and 7
  const __m256i quads_0_of_4567 = _mm256_unpacklo_epi64(pairs_low_45, pairs_low_67);
  const __m256i quads_1_of_4567 = _mm256_unpackhi_epi64(pairs_low_45, pairs_low_67);
  const __m256i quads_2_of_4567 = _mm256_unpacklo_epi64(pairs_high_45, pairs_high_67);
  const __m256i quads_3_of_4567 = _mm256_unpackhi_epi64(pairs_high_45, pairs_high_67);
  words[0] = _mm256_permute2x128_si256(quads_0_of_0123, quads_0_of_4567, 0x20);
  words[4] = _mm256_permute2x128_si256(quads_0_of_0123, quads_0_of_4567, 0x31);
  words[1] = _mm256_permute2x128_si256(quads_1_of_0123, quads_1_of_4567, 0x20);
  words[5] = _mm256_permute2x128_si256(quads_1_of_0123, quads_1_of_4567, 0x31);
  words[2] = _mm256_permute2x128_si256(quads_2_of_0123, quads_2_of_4567, 0x20);
  words[6] = _mm256_permute2x128_si256(quads_2_of_0123, quads_2_of_4567, 0x31);
  words[3] = _mm256_permute2x128_si256(quads_3_of_0123, quads_3_of_4567, 0x20);
  words[7] = _mm256_permute2x128_si256(quads_3_of_0123, quads_3_of_4567, 0x31);
}

// The chaining values of the eight whole chunks at `input` (chunk counters counter … counter + 7).
__attribute__((target("avx2"))) void CompressEightChunks(const uint8_t* input, const uint32_t key_words[8],
                                                         uint64_t counter, uint32_t flags,
                                                         uint32_t chaining_values[kSimdChunks][8]) {
  __m256i h[8];
  for (int word = 0; word < 8; ++word) h[word] = _mm256_set1_epi32(static_cast<int>(key_words[word]));
  uint32_t counter_low[kSimdChunks];
  uint32_t counter_high[kSimdChunks];
  for (size_t lane = 0; lane < kSimdChunks; ++lane) {
    counter_low[lane] = static_cast<uint32_t>(counter + lane);
    counter_high[lane] = static_cast<uint32_t>((counter + lane) >> 32);
  }
  const __m256i counter_low_vector = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(counter_low));
  const __m256i counter_high_vector = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(counter_high));
  for (size_t block = 0; block < kChunkLength / kBlockLength; ++block) {
    // Word w of this block in every chunk (little-endian loads, as x86 is).
    __m256i message[16];
    const uint8_t* block_start = input + block * kBlockLength;
    LoadTransposed(block_start, message);
    LoadTransposed(block_start + 32, message + 8);
    const uint32_t block_flags = flags | (block == 0 ? kChunkStart : 0) |
                                 (block == kChunkLength / kBlockLength - 1 ? kChunkEnd : 0);
    __m256i v[16] = {h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
                     _mm256_set1_epi32(static_cast<int>(kIv[0])), _mm256_set1_epi32(static_cast<int>(kIv[1])),
                     _mm256_set1_epi32(static_cast<int>(kIv[2])), _mm256_set1_epi32(static_cast<int>(kIv[3])),
                     counter_low_vector, counter_high_vector,
                     _mm256_set1_epi32(static_cast<int>(kBlockLength)), _mm256_set1_epi32(static_cast<int>(block_flags))};
#define FLOTILLA_BLAKE3_G8(a, b, c, d, x, y)                               \
  v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), (x));             \
  v[d] = Rotate16(_mm256_xor_si256(v[d], v[a]));                           \
  v[c] = _mm256_add_epi32(v[c], v[d]);                                     \
  v[b] = Rotate12(_mm256_xor_si256(v[b], v[c]));                           \
  v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), (y));             \
  v[d] = Rotate8(_mm256_xor_si256(v[d], v[a]));                            \
  v[c] = _mm256_add_epi32(v[c], v[d]);                                     \
  v[b] = Rotate7(_mm256_xor_si256(v[b], v[c]));
    for (int round = 0; round < 7; ++round) {
      const uint8_t* schedule = kMessageSchedule[round];
      FLOTILLA_BLAKE3_G8(0, 4, 8, 12, message[schedule[0]], message[schedule[1]]);
      FLOTILLA_BLAKE3_G8(1, 5, 9, 13, message[schedule[2]], message[schedule[3]]);
      FLOTILLA_BLAKE3_G8(2, 6, 10, 14, message[schedule[4]], message[schedule[5]]);
      FLOTILLA_BLAKE3_G8(3, 7, 11, 15, message[schedule[6]], message[schedule[7]]);
      FLOTILLA_BLAKE3_G8(0, 5, 10, 15, message[schedule[8]], message[schedule[9]]);
      FLOTILLA_BLAKE3_G8(1, 6, 11, 12, message[schedule[10]], message[schedule[11]]);
      FLOTILLA_BLAKE3_G8(2, 7, 8, 13, message[schedule[12]], message[schedule[13]]);
      FLOTILLA_BLAKE3_G8(3, 4, 9, 14, message[schedule[14]], message[schedule[15]]);
    }
#undef FLOTILLA_BLAKE3_G8
    for (int word = 0; word < 8; ++word) h[word] = _mm256_xor_si256(v[word], v[word + 8]);
  }
  uint32_t words[8][kSimdChunks];
  for (int word = 0; word < 8; ++word) _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[word]), h[word]);
  for (size_t lane = 0; lane < kSimdChunks; ++lane) {
    for (int word = 0; word < 8; ++word) chaining_values[lane][word] = words[word][lane];
  }
}

// Note [BLAKE3 with AVX-512]: the same compression, sixteen chunks (16 KiB) at once in the sixteen
// lanes of AVX-512 registers, where the CPU has AVX-512F. The rotations are single instructions
// (vprord) instead of shuffles and shift pairs, and the message words are loaded as two 8×8
// transposes (LoadTransposed, chunks 0-7 and 8-15) joined into one register. Taken before the
// eight-lane path for runs of more than sixteen whole chunks; the eight-lane path and the
// portable code finish the rest. Checked like the AVX2 path against the test vectors and the
// portable path (SimdAndPortablePathsAgree), with each SIMD level allowed in turn.
constexpr size_t kWideSimdChunks = 16;

__attribute__((target("avx2,avx512f"))) inline void LoadTransposedSixteen(const uint8_t* start, __m512i words[8]) {
  __m256i low[8];
  __m256i high[8];
  LoadTransposed(start, low);
  LoadTransposed(start + 8 * kChunkLength, high);
  for (int word = 0; word < 8; ++word) {
    words[word] = _mm512_inserti64x4(_mm512_castsi256_si512(low[word]), high[word], 1);
  }
}

// The chaining values of the sixteen whole chunks at `input` (chunk counters counter … counter + 15).
__attribute__((target("avx2,avx512f"))) void CompressSixteenChunks(const uint8_t* input, const uint32_t key_words[8],
                                                                   uint64_t counter, uint32_t flags,
                                                                   uint32_t chaining_values[kWideSimdChunks][8]) {
  __m512i h[8];
  for (int word = 0; word < 8; ++word) h[word] = _mm512_set1_epi32(static_cast<int>(key_words[word]));
  uint32_t counter_low[kWideSimdChunks];
  uint32_t counter_high[kWideSimdChunks];
  for (size_t lane = 0; lane < kWideSimdChunks; ++lane) {
    counter_low[lane] = static_cast<uint32_t>(counter + lane);
    counter_high[lane] = static_cast<uint32_t>((counter + lane) >> 32);
  }
  const __m512i counter_low_vector = _mm512_loadu_si512(counter_low);
  const __m512i counter_high_vector = _mm512_loadu_si512(counter_high);
  for (size_t block = 0; block < kChunkLength / kBlockLength; ++block) {
    __m512i message[16];
    const uint8_t* block_start = input + block * kBlockLength;
    LoadTransposedSixteen(block_start, message);
    LoadTransposedSixteen(block_start + 32, message + 8);
    const uint32_t block_flags = flags | (block == 0 ? kChunkStart : 0) |
                                 (block == kChunkLength / kBlockLength - 1 ? kChunkEnd : 0);
    __m512i v[16] = {h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
                     _mm512_set1_epi32(static_cast<int>(kIv[0])), _mm512_set1_epi32(static_cast<int>(kIv[1])),
                     _mm512_set1_epi32(static_cast<int>(kIv[2])), _mm512_set1_epi32(static_cast<int>(kIv[3])),
                     counter_low_vector, counter_high_vector,
                     _mm512_set1_epi32(static_cast<int>(kBlockLength)), _mm512_set1_epi32(static_cast<int>(block_flags))};
#define FLOTILLA_BLAKE3_G16(a, b, c, d, x, y)                                 \
  v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), (x));                 \
  v[d] = _mm512_ror_epi32(_mm512_xor_si512(v[d], v[a]), 16);                  \
  v[c] = _mm512_add_epi32(v[c], v[d]);                                        \
  v[b] = _mm512_ror_epi32(_mm512_xor_si512(v[b], v[c]), 12);                  \
  v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), (y));                 \
  v[d] = _mm512_ror_epi32(_mm512_xor_si512(v[d], v[a]), 8);                   \
  v[c] = _mm512_add_epi32(v[c], v[d]);                                        \
  v[b] = _mm512_ror_epi32(_mm512_xor_si512(v[b], v[c]), 7);
    for (int round = 0; round < 7; ++round) {
      const uint8_t* schedule = kMessageSchedule[round];
      FLOTILLA_BLAKE3_G16(0, 4, 8, 12, message[schedule[0]], message[schedule[1]]);
      FLOTILLA_BLAKE3_G16(1, 5, 9, 13, message[schedule[2]], message[schedule[3]]);
      FLOTILLA_BLAKE3_G16(2, 6, 10, 14, message[schedule[4]], message[schedule[5]]);
      FLOTILLA_BLAKE3_G16(3, 7, 11, 15, message[schedule[6]], message[schedule[7]]);
      FLOTILLA_BLAKE3_G16(0, 5, 10, 15, message[schedule[8]], message[schedule[9]]);
      FLOTILLA_BLAKE3_G16(1, 6, 11, 12, message[schedule[10]], message[schedule[11]]);
      FLOTILLA_BLAKE3_G16(2, 7, 8, 13, message[schedule[12]], message[schedule[13]]);
      FLOTILLA_BLAKE3_G16(3, 4, 9, 14, message[schedule[14]], message[schedule[15]]);
    }
#undef FLOTILLA_BLAKE3_G16
    for (int word = 0; word < 8; ++word) h[word] = _mm512_xor_si512(v[word], v[word + 8]);
  }
  uint32_t words[8][kWideSimdChunks];
  for (int word = 0; word < 8; ++word) _mm512_storeu_si512(words[word], h[word]);
  for (size_t lane = 0; lane < kWideSimdChunks; ++lane) {
    for (int word = 0; word < 8; ++word) chaining_values[lane][word] = words[word][lane];
  }
}

std::atomic<bool> simd_allowed{true};
std::atomic<bool> avx512_allowed{true};

bool HasAvx2() {
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  return has_avx2 && simd_allowed.load(std::memory_order_relaxed);
}
bool HasAvx512() {
  static const bool has_avx512 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f");
  return has_avx512 && simd_allowed.load(std::memory_order_relaxed) && avx512_allowed.load(std::memory_order_relaxed);
}
#else
constexpr size_t kWideSimdChunks = 16;
std::atomic<bool> simd_allowed{true};
std::atomic<bool> avx512_allowed{true};
bool HasAvx2() { return false; }
bool HasAvx512() { return false; }
void CompressEightChunks(const uint8_t*, const uint32_t*, uint64_t, uint32_t, uint32_t (*)[8]) {}
void CompressSixteenChunks(const uint8_t*, const uint32_t*, uint64_t, uint32_t, uint32_t (*)[8]) {}
#endif

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
  // Whole blocks straight from the input while more input follows them (the last block of the
  // chunk must wait in the buffer: it is compressed with kChunkEnd).
  if (chunk_.block_length == 0) {
    while (size > kBlockLength) {
      uint32_t block_words[16];
      WordsFromLittleEndian(data, 16, block_words);
      uint32_t flags = flags_ | (chunk_.blocks_compressed == 0 ? kChunkStart : 0);
      uint32_t out[16];
      Compress(chunk_.chaining_value, block_words, chunk_.chunk_counter, kBlockLength, flags, out);
      std::memcpy(chunk_.chaining_value, out, 8 * sizeof(uint32_t));
      ++chunk_.blocks_compressed;
      data += kBlockLength;
      size -= kBlockLength;
    }
  }
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
    // Sixteen whole chunks at a time when more input follows them (Note [BLAKE3 with AVX-512]).
    if (chunk_.Length() == 0 && size > kWideSimdChunks * kChunkLength && HasAvx512()) {
      uint32_t chaining_values[kWideSimdChunks][8];
      CompressSixteenChunks(data, key_words_, chunk_.chunk_counter, flags_, chaining_values);
      for (size_t lane = 0; lane < kWideSimdChunks; ++lane) {
        PushChunkChainingValue(chaining_values[lane], chunk_.chunk_counter + lane + 1);
      }
      ResetChunk(chunk_.chunk_counter + kWideSimdChunks);
      data += kWideSimdChunks * kChunkLength;
      size -= kWideSimdChunks * kChunkLength;
      continue;
    }
    // Eight whole chunks at a time when more input follows them (Note [BLAKE3 with AVX2]).
    if (chunk_.Length() == 0 && size > kSimdChunks * kChunkLength && HasAvx2()) {
      uint32_t chaining_values[kSimdChunks][8];
      CompressEightChunks(data, key_words_, chunk_.chunk_counter, flags_, chaining_values);
      for (size_t lane = 0; lane < kSimdChunks; ++lane) {
        PushChunkChainingValue(chaining_values[lane], chunk_.chunk_counter + lane + 1);
      }
      ResetChunk(chunk_.chunk_counter + kSimdChunks);
      data += kSimdChunks * kChunkLength;
      size -= kSimdChunks * kChunkLength;
      continue;
    }
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

bool Blake3AllowSimd(bool allowed) {
  simd_allowed.store(allowed);
  return HasAvx2();
}

bool Blake3AllowAvx512(bool allowed) {
  avx512_allowed.store(allowed);
  return HasAvx512();
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
