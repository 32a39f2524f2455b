#include "models/safetensors.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace flotilla::models {
namespace {

std::string FileWithHeader(const std::string& header, size_t data_bytes) {
  std::string bytes(8, '\0');
  uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  return bytes + header + std::string(data_bytes, '\0');
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("flotilla_models_test_" + name)).string();
}

TEST(SafetensorsTest, RoundTripsEveryDtypeZeroCopy) {
  const std::string path = TempPath("roundtrip.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", at::randn({3, 4})},
      {"bf16", at::randn({5}).to(at::kBFloat16)},
      {"f16", at::randn({2, 2}).to(at::kHalf)},
      {"i64", at::arange(7, at::kLong)},
      {"i32", at::arange(3, at::kInt)},
      {"u8", at::arange(9, at::kByte)},
      {"transposed", at::randn({4, 3}).t()},
  };
  ASSERT_TRUE(SaveSafetensors(path, tensors).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().metadata.at("format"), "pt");
  for (const auto& [name, tensor] : tensors) {
    auto loaded = (*file)->Get(name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE(loaded->equal(tensor.contiguous())) << name;
  }
  // Data starts 8-byte aligned, so the f32 tensor aliases the mapping.
  auto f32 = (*file)->Get("f32");
  EXPECT_EQ(f32->data_ptr(), static_cast<const void*>((*file)->Data(*(*file)->Find("f32"))));
  std::filesystem::remove(path);
}

// The arena converted weights are copied into: the bytes asked for, writable, 2 MiB-aligned when
// large enough to sit on huge pages (whether the kernel backs them with huge pages is its choice),
// and alive as long as any tensor viewing it.
TEST(SafetensorsTest, HugePageBytesAreAlignedWritableAndOutliveTheirFirstHandle) {
  const int64_t bytes = (int64_t{5} << 20) + 3;
  at::Tensor view;
  {
    at::Tensor arena = EmptyBytesOnHugePages(bytes);
    ASSERT_EQ(arena.numel(), bytes);
    EXPECT_EQ(arena.scalar_type(), at::kByte);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(arena.data_ptr()) % (uintptr_t{2} << 20), 0u);
    arena.fill_(7);
    view = arena.narrow(0, bytes - 19, 16).view(at::kFloat);  // the last whole floats, 4-aligned
  }
  EXPECT_EQ(view.numel(), 4);
  EXPECT_TRUE(at::equal(view.view(at::kByte), at::full({16}, 7, at::kByte)));
  // Below one huge page it is an ordinary allocation of exactly the bytes asked for.
  EXPECT_EQ(EmptyBytesOnHugePages(100).numel(), 100);
  EXPECT_EQ(EmptyBytesOnHugePages(0).numel(), 0);
}

TEST(SafetensorsTest, RejectsLengthPastEndOfFile) {
  std::string bytes = FileWithHeader("{}", 0);
  bytes[0] = 100;
  auto header = ParseSafetensorsHeader(bytes, "bad.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_NE(header.status().message().find("bad.safetensors"), std::string::npos);
  EXPECT_NE(header.status().message().find("runs past the end of the file"), std::string::npos);
  EXPECT_FALSE(ParseSafetensorsHeader("abc", "short").ok());
}

TEST(SafetensorsTest, RejectsOverlappingOffsets) {
  auto header = ParseSafetensorsHeader(
      FileWithHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
      "overlap.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_NE(header.status().message().find("overlap"), std::string::npos) << header.status();
}

TEST(SafetensorsTest, RejectsOffsetsOutOfRange) {
  auto header = ParseSafetensorsHeader(
      FileWithHeader(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8), "short.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_NE(header.status().message().find("tensor a"), std::string::npos);
  EXPECT_NE(header.status().message().find("past the data section"), std::string::npos);
}

TEST(SafetensorsTest, RejectsUnknownDtype) {
  auto header = ParseSafetensorsHeader(
      FileWithHeader(R"({"a":{"dtype":"F8_E9","shape":[1],"data_offsets":[0,1]}})", 1), "dtype.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_NE(header.status().message().find("unknown dtype \"F8_E9\""), std::string::npos) << header.status();
}

TEST(SafetensorsTest, RejectsShapeThatDisagreesWithBytes) {
  auto header = ParseSafetensorsHeader(
      FileWithHeader(R"({"w":{"dtype":"BF16","shape":[3,2],"data_offsets":[0,10]}})", 10), "shape.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_NE(header.status().message().find("shape [3, 2] of BF16 needs 12 bytes but data_offsets cover 10"),
            std::string::npos)
      << header.status();
}

TEST(SafetensorsTest, RejectsMalformedJson) {
  EXPECT_FALSE(ParseSafetensorsHeader(FileWithHeader("{not json", 0), "json").ok());
  EXPECT_FALSE(ParseSafetensorsHeader(FileWithHeader("[]", 0), "json").ok());
  EXPECT_FALSE(ParseSafetensorsHeader(FileWithHeader(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0),
                                      "negative").ok());
}

TEST(SafetensorsTest, ReadsShardedCheckpoints) {
  const auto folder = std::filesystem::path(TempPath("sharded"));
  std::filesystem::create_directories(folder);
  ASSERT_TRUE(SaveSafetensors((folder / "model-00001-of-00002.safetensors").string(), {{"a", at::ones({2})}}).ok());
  ASSERT_TRUE(SaveSafetensors((folder / "model-00002-of-00002.safetensors").string(), {{"b", at::zeros({3})}}).ok());
  std::ofstream(folder / "model.safetensors.index.json")
      << R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})";
  auto checkpoint = SafetensorsCheckpoint::Open(folder.string());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->TensorNames(), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE((*checkpoint)->Get("b")->equal(at::zeros({3})));
  EXPECT_FALSE((*checkpoint)->Get("c").ok());
  std::filesystem::remove_all(folder);
}

}  // namespace
}  // namespace flotilla::models
