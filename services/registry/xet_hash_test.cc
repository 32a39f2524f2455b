// BLAKE3, the Xet hashes and the chunker against reference values: BLAKE3's official test-vector
// inputs hashed by the `blake3` PyPI package, the Xet specification's published test vectors, and
// file hashes that hf_xet 1.8.0 (`hf_xet.hash_files`) produced for the inputs built below.
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <lz4frame.h>

#include "services/registry/blake3.h"
#include "services/registry/xet_chunker.h"
#include "services/registry/xet_format.h"
#include "services/registry/xet_hash.h"

namespace flotilla::registry {
namespace {

std::string Hex(const std::array<uint8_t, 32>& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  for (uint8_t byte : bytes) {
    text.push_back(kDigits[byte >> 4]);
    text.push_back(kDigits[byte & 0xf]);
  }
  return text;
}

XetHash FromHex(const std::string& text) {
  XetHash hash{};
  for (size_t i = 0; i < 32; ++i) hash[i] = static_cast<uint8_t>(std::stoi(text.substr(2 * i, 2), nullptr, 16));
  return hash;
}

struct Blake3Vector {
  size_t input_length;
  const char* hash;
  const char* keyed_hash;
  const char* derive_key;
};

// Inputs as in BLAKE3's test_vectors.json: bytes i % 251. Outputs from blake3==1.0.8 (PyPI).
constexpr Blake3Vector kBlake3Vectors[] = {
      {0, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26", "2cc39783c223154fea8dfb7c1b1660f2ac2dcbd1c1de8277b0b0dd39b7e50d7d"},
      {1, "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213", "6d7878dfff2f485635d39013278ae14f1454b8c0a3a2d34bc1ab38228a80c95b", "b3e2e340a117a499c6cf2398a19ee0d29cca2bb7404c73063382693bf66cb06c"},
      {63, "e9bc37a594daad83be9470df7f7b3798297c3d834ce80ba85d6e207627b7db7b", "bb1eb5d4afa793c1ebdd9fb08def6c36d10096986ae0cfe148cd101170ce37ae", "b6451e30b953c206e34644c6803724e9d2725e0893039cfc49584f991f451af3"},
      {64, "4eed7141ea4a5cd4b788606bd23f46e212af9cacebacdc7d1f4c6dc7f2511b98", "ba8ced36f327700d213f120b1a207a3b8c04330528586f414d09f2f7d9ccb7e6", "a5c4a7053fa86b64746d4bb688d06ad1f02a18fce9afd3e818fefaa7126bf73e"},
      {65, "de1e5fa0be70df6d2be8fffd0e99ceaa8eb6e8c93a63f2d8d1c30ecb6b263dee", "c0a4edefa2d2accb9277c371ac12fcdbb52988a86edc54f0716e1591b4326e72", "51fd05c3c1cfbc8ed67d139ad76f5cf8236cd2acd26627a30c104dfd9d3ff8a8"},
      {1023, "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11", "c951ecdf03288d0fcc96ee3413563d8a6d3589547f2c2fb36d9786470f1b9d6e", "74a16c1c3d44368a86e1ca6df64be6a2f64cce8f09220787450722d85725dea5"},
      {1024, "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7", "75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4", "7356cd7720d5b66b6d0697eb3177d9f8d73a4a5c5e968896eb6a689684302706"},
      {1025, "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444", "357dc55de0c7e382c900fd6e320acc04146be01db6a8ce7210b7189bd664ea69", "effaa245f065fbf82ac186839a249707c3bddf6d3fdda22d1b95a3c970379bcb"},
      {2048, "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a", "879cf1fa2ea0e79126cb1063617a05b6ad9d0b696d0d757cf053439f60a99dd1", "7b2945cb4fef70885cc5d78a87bf6f6207dd901ff239201351ffac04e1088a23"},
      {2049, "5f4d72f40d7a5f82b15ca2b2e44b1de3c2ef86c426c95c1af0b6879522563030", "9f29700902f7c86e514ddc4df1e3049f258b2472b6dd5267f61bf13983b78dd5", "2ea477c5515cc3dd606512ee72bb3e0e758cfae7232826f35fb98ca1bcbdf273"},
      {3072, "b98cb0ff3623be03326b373de6b9095218513e64f1ee2edd2525c7ad1e5cffd2", "044a0e7b172a312dc02a4c9a818c036ffa2776368d7f528268d2e6b5df191770", "050df97f8c2ead654d9bb3ab8c9178edcd902a32f8495949feadcc1e0480c46b"},
      {3073, "7124b49501012f81cc7f11ca069ec9226cecb8a2c850cfe644e327d22d3e1cd3", "68dede9bef00ba89e43f31a6825f4cf433389fedae75c04ee9f0cf16a427c95a", "72613c9ec9ff7e40f8f5c173784c532ad852e827dba2bf85b2ab4b76f7079081"},
      {4096, "015094013f57a5277b59d8475c0501042c0b642e531b0a1c8f58d2163229e969", "befc660aea2f1718884cd8deb9902811d332f4fc4a38cf7c7300d597a081bfc0", "1e0d7f3db8c414c97c6307cbda6cd27ac3b030949da8e23be1a1a924ad2f25b9"},
      {4097, "9b4052b38f1c5fc8b1f9ff7ac7b27cd242487b3d890d15c96a1c25b8aa0fb995", "00df940cd36bb9fa7cbbc3556744e0dbc8191401afe70520ba292ee3ca80abbc", "aca51029626b55fda7117b42a7c211f8c6e9ba4fe5b7a8ca922f34299500ead8"},
      {5120, "9cadc15fed8b5d854562b26a9536d9707cadeda9b143978f319ab34230535833", "2c493e48e9b9bf31e0553a22b23503c0a3388f035cece68eb438d22fa1943e20", "7a7acac8a02adcf3038d74cdd1d34527de8a0fcc0ee3399d1262397ce5817f60"},
      {5121, "628bd2cb2004694adaab7bbd778a25df25c47b9d4155a55f8fbd79f2fe154cff", "6ccf1c34753e7a044db80798ecd0782a8f76f33563accaddbfbb2e0ea4b2d024", "b07f01e518e702f7ccb44a267e9e112d403a7b3f4883a47ffbed4b48339b3c34"},
      {8192, "aae792484c8efe4f19e2ca7d371d8c467ffb10748d8a5a1ae579948f718a2a63", "dc9637c8845a770b4cbf76b8daec0eebf7dc2eac11498517f08d44c8fc00d58a", "ad01d7ae4ad059b0d33baa3c01319dcf8088094d0359e5fd45d6aeaa8b2d0c3d"},
      {8193, "bab6c09cb8ce8cf459261398d2e7aef35700bf488116ceb94a36d0f5f1b7bc3b", "954a2a75420c8d6547e3ba5b98d963e6fa6491addc8c023189cc519821b4a1f5", "af1e0346e389b17c23200270a64aa4e1ead98c61695d917de7d5b00491c9b0f1"},
      {16384, "f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4", "9e9fc4eb7cf081ea7c47d1807790ed211bfec56aa25bb7037784c13c4b707b0d", "160e18b5878cd0df1c3af85eb25a0db5344d43a6fbd7a8ef4ed98d0714c3f7e1"},
      {31744, "62b6960e1a44bcc1eb1a611a8d6235b6b4b78f32e7abc4fb4c6cdcce94895c47", "efa53b389ab67c593dba624d898d0f7353ab99e4ac9d42302ee64cbf9939a419", "39772aef80e0ebe60596361e45b061e8f417429d529171b6764468c22928e28e"},
      {102400, "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085", "1c35d1a5811083fd7119f5d5d1ba027b4d01c0c6c49fb6ff2cf75393ea5db4a7", "4652cff7a3f385a6103b5c260fc1593e13c778dbe608efb092fe7ee69df6e9c6"},
};

TEST(Blake3Test, MatchesReferenceForAllModesAndTreeShapes) {
  Blake3Key key;
  const std::string key_text = "whats the Elvish word for friend";
  std::copy(key_text.begin(), key_text.end(), key.begin());
  for (const Blake3Vector& vector : kBlake3Vectors) {
    std::string input(vector.input_length, '\0');
    for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<char>(i % 251);
    EXPECT_EQ(Hex(Blake3(input)), vector.hash) << "length " << vector.input_length;
    EXPECT_EQ(Hex(Blake3Keyed(key, input)), vector.keyed_hash) << "length " << vector.input_length;
    EXPECT_EQ(Hex(Blake3DeriveKey("BLAKE3 2019-12-27 16:29:52 test vectors context", input)), vector.derive_key)
        << "length " << vector.input_length;
  }
}

// The AVX-512 path (sixteen chunks at once, Note [BLAKE3 with AVX-512]), the AVX2 path (eight,
// Note [BLAKE3 with AVX2]) and the portable one give the same bytes for every mode, at sizes
// around the sixteen- and eight-chunk batches, one-shot or incremental.
TEST(Blake3Test, SimdAndPortablePathsAgree) {
  std::string input(1 << 20, '\0');
  uint64_t state = 12345;
  for (char& byte : input) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    byte = static_cast<char>(state >> 56);
  }
  Blake3Key key;
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(3 * i + 1);
  for (size_t length : {size_t{8192}, size_t{8193}, size_t{9216}, size_t{16384}, size_t{16385}, size_t{25 * 1024 + 1},
                        size_t{65536 + 7}, size_t{(1 << 20) - 1}, size_t{1 << 20}}) {
    const absl::string_view data(input.data(), length);
    Blake3AllowSimd(false);
    const std::string plain = Hex(Blake3(data));
    const std::string keyed = Hex(Blake3Keyed(key, data));
    const std::string derived = Hex(Blake3DeriveKey("flotilla test context", data));
    Blake3AllowSimd(true);
    for (bool avx512 : {false, true}) {
      const bool wide = Blake3AllowAvx512(avx512);
      EXPECT_EQ(Hex(Blake3(data)), plain) << "length " << length << " AVX-512 " << wide;
      EXPECT_EQ(Hex(Blake3Keyed(key, data)), keyed) << "length " << length << " AVX-512 " << wide;
      EXPECT_EQ(Hex(Blake3DeriveKey("flotilla test context", data)), derived) << "length " << length << " AVX-512 " << wide;
      // Pieces that start mid-chunk, then long runs: the batches begin at other counters.
      Blake3Hasher hasher = Blake3Hasher::Keyed(key);
      hasher.Update(data.substr(0, 1500));
      hasher.Update(data.substr(1500, 548));
      hasher.Update(data.substr(2048));
      EXPECT_EQ(Hex(hasher.Finalize()), keyed) << "length " << length << " AVX-512 " << wide;
    }
  }
  Blake3AllowAvx512(true);
}

// The published vectors again with each SIMD level allowed in turn (the 16 KiB and longer inputs
// reach the wide paths).
TEST(Blake3Test, EverySimdLevelMatchesTheReference) {
  Blake3Key key;
  const std::string key_text = "whats the Elvish word for friend";
  std::copy(key_text.begin(), key_text.end(), key.begin());
  for (bool avx512 : {false, true}) {
    Blake3AllowAvx512(avx512);
    for (const Blake3Vector& vector : kBlake3Vectors) {
      std::string input(vector.input_length, '\0');
      for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<char>(i % 251);
      EXPECT_EQ(Hex(Blake3(input)), vector.hash) << "length " << vector.input_length << " AVX-512 " << avx512;
      EXPECT_EQ(Hex(Blake3Keyed(key, input)), vector.keyed_hash) << "length " << vector.input_length;
    }
  }
  Blake3AllowAvx512(true);
}

TEST(Blake3Test, IncrementalUpdatesEqualOneShot) {
  std::string input(10000, '\0');
  for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<char>(i * 7 % 256);
  for (size_t piece : {1, 63, 64, 65, 1000, 1024, 4097}) {
    Blake3Hasher hasher;
    for (size_t offset = 0; offset < input.size(); offset += piece) {
      hasher.Update(absl::string_view(input).substr(offset, piece));
    }
    EXPECT_EQ(Hex(hasher.Finalize()), Hex(Blake3(input))) << "piece " << piece;
  }
}

// The Xet specification's "Test Vectors" appendix.
TEST(XetHashTest, SpecificationChunkHashVector) {
  XetHash hash = XetChunkHash("Hello World!");
  EXPECT_EQ(Hex(hash), "a29cfb08e608d4d8726dd8659a90b9134b3240d5d8e42d5fcb28e2a6e763a3e8");
  EXPECT_EQ(XetHashToString(hash), "d8d408e608fb9ca213b9909a65d86d725f2de4d8d540324be8a363e7a6e228cb");
}

TEST(XetHashTest, SpecificationHashStringVector) {
  XetHash hash;
  for (int i = 0; i < 32; ++i) hash[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(XetHashToString(hash), "07060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918");
  absl::StatusOr<XetHash> parsed = XetHashFromString(XetHashToString(hash));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, hash);
}

TEST(XetHashTest, MalformedHashStringsAreRefused) {
  EXPECT_EQ(XetHashFromString("abc").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(XetHashFromString(std::string(63, '0') + "g").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(XetHashTest, SpecificationInternalNodeVector) {
  XetHash first = *XetHashFromString("c28f58387a60d4aa200c311cda7c7f77f686614864f5869eadebf765d0a14a69");
  XetHash second = *XetHashFromString("6e4e3263e073ce2c0e78cc770c361e2778db3b054b98ab65e277fc084fa70f22");
  EXPECT_EQ(XetHashToString(XetMerkleRoot({{first, 100}, {second, 200}})),
            "be64c7003ccd3cf4357364750e04c9592b3c36705dee76a71590c011766b6c14");
}

TEST(XetHashTest, SpecificationVerificationRangeVector) {
  std::vector<XetHash> chunk_hashes = {
      FromHex("aad4607a38588fc2777f7cda1c310c209e86f564486186f6694aa1d065f7ebad"),
      FromHex("2cce73e063324e6e271e360c77cc780e65ab984b053bdb78220fa74f08fc77e2")};
  EXPECT_EQ(XetHashToString(XetVerificationHash(chunk_hashes, 0, 2)),
            "eb06a8ad81d588ac05d1d9a079232d9c1e7d0b07232fa58091caa7bf333a2768");
}

// Deterministic bytes: xorshift64 words, little-endian (the same generator produced the hf_xet
// reference values).
std::string XorshiftBytes(size_t size, uint64_t seed) {
  std::string bytes(size, '\0');
  uint64_t state = seed;
  for (size_t offset = 0; offset < size; offset += 8) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    for (size_t byte = 0; byte < 8 && offset + byte < size; ++byte) {
      bytes[offset + byte] = static_cast<char>(state >> (8 * byte));
    }
  }
  return bytes;
}

XetHash FileHashOf(const std::string& bytes) {
  return XetFileHash(XetChunkHashes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

// Reference values: hf_xet.hash_files (hf_xet 1.8.0) over the same bytes.
TEST(XetHashTest, FileHashesMatchHfXet) {
  EXPECT_EQ(XetHashToString(FileHashOf("")), std::string(64, '0'));
  EXPECT_EQ(XetHashToString(FileHashOf("Hello World!")),
            "a9dae0ad88b060bdd7e7c87abdcf95b132c95a0414b06d4f6beb68d287b87165");
  EXPECT_EQ(XetHashToString(FileHashOf(std::string(1 << 20, '\0'))),
            "1e671fe124cea35586b1d1c30b9d4fc6b4e05ee60c93406986444f7c23d54056");
  EXPECT_EQ(XetHashToString(FileHashOf(XorshiftBytes(3 * (1 << 20) + 12345, 0x9E3779B97F4A7C15ull))),
            "6323c8d48b5290fba80a3d1695fb448b8ae50c52fb4a3ab61ef1c8895fe8128a");
}

TEST(XetChunkerTest, BoundariesRespectSizeLimitsAndIgnoreFeedSizes) {
  std::string bytes = XorshiftBytes(5 * (1 << 20), 42);
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  std::vector<uint64_t> whole = XetChunkBoundaries(data, bytes.size());
  ASSERT_FALSE(whole.empty());
  EXPECT_EQ(whole.back(), bytes.size());
  uint64_t start = 0;
  for (size_t index = 0; index < whole.size(); ++index) {
    uint64_t size = whole[index] - start;
    EXPECT_LE(size, kXetMaxChunkSize);
    if (index + 1 < whole.size()) EXPECT_GE(size, kXetMinChunkSize);
    start = whole[index];
  }
  // Random data averages about the 64 KiB target.
  EXPECT_GT(whole.size(), 40u);
  EXPECT_LT(whole.size(), 120u);
  for (size_t piece : {1000, 65536, 1 << 20}) {
    XetChunker chunker;
    std::vector<uint64_t> streamed;
    for (size_t offset = 0; offset < bytes.size(); offset += piece) {
      chunker.Feed(data + offset, std::min(piece, bytes.size() - offset), &streamed);
    }
    chunker.Finish(&streamed);
    EXPECT_EQ(streamed, whole) << "piece " << piece;
  }
}

TEST(XetChunkerTest, AnEditMovesOnlyNearbyChunks) {
  std::string original = XorshiftBytes(4 * (1 << 20), 7);
  std::string edited = original;
  edited[2 * (1 << 20)] ^= 0x5a;
  std::vector<XetHashAndSize> before = XetChunkHashes(reinterpret_cast<const uint8_t*>(original.data()), original.size());
  std::vector<XetHashAndSize> after = XetChunkHashes(reinterpret_cast<const uint8_t*>(edited.data()), edited.size());
  size_t shared = 0;
  for (const XetHashAndSize& chunk : after) {
    for (const XetHashAndSize& old_chunk : before) {
      if (old_chunk.hash == chunk.hash) {
        ++shared;
        break;
      }
    }
  }
  EXPECT_GE(shared + 2, after.size());
}

}  // namespace
// A ByteGrouping4+LZ4 chunk (hf_xet's choice for float tensors: byte 0 of every 4-byte word first,
// then byte 1, ...; the first size % 4 groups one byte longer) decodes to the original bytes, for
// every remainder of the size by 4.
TEST(XetFormatTest, ByteGrouping4ChunksDecodeForEverySizeRemainder) {
  for (size_t size : {1, 2, 3, 4, 5, 6, 7, 8, 9, 4096, 65537, 65538, 65539, 131071}) {
    std::string data(size, '\0');
    for (size_t index = 0; index < size; ++index) data[index] = static_cast<char>((index * 131 + index / 7) & 0xff);
    std::string grouped;
    for (size_t group = 0; group < 4; ++group) {
      for (size_t index = group; index < size; index += 4) grouped.push_back(data[index]);
    }
    std::string frame(LZ4F_compressFrameBound(grouped.size(), nullptr), '\0');
    const size_t framed = LZ4F_compressFrame(frame.data(), frame.size(), grouped.data(), grouped.size(), nullptr);
    ASSERT_FALSE(LZ4F_isError(framed));
    frame.resize(framed);
    // The chunk header: version 0, compressed size (24-bit little endian), type 2, uncompressed size.
    std::string chunk = {0, static_cast<char>(framed & 0xff), static_cast<char>((framed >> 8) & 0xff),
                         static_cast<char>((framed >> 16) & 0xff), 2, static_cast<char>(size & 0xff),
                         static_cast<char>((size >> 8) & 0xff), static_cast<char>((size >> 16) & 0xff)};
    chunk += frame;
    size_t consumed = 0;
    absl::StatusOr<std::string> decoded = DecodeXorbChunk(chunk, &consumed);
    ASSERT_TRUE(decoded.ok()) << size << ": " << decoded.status();
    EXPECT_EQ(consumed, chunk.size());
    EXPECT_TRUE(*decoded == data) << "size " << size;
  }
}

}  // namespace flotilla::registry
