// Unit tests of the tokenizer library on small hand-written tokenizer.json files; the comparison
// with Python's `tokenizers` on real and trained tokenizers is tests/tokenizer/.
#include "services/preprocess/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include "services/preprocess/tokenizer/unicode.h"

namespace flotilla::tokenizer {
namespace {

constexpr char kWordLevel[] = R"({
  "version": "1.0", "added_tokens": [{"id": 3, "content": "[SEP]", "special": true}],
  "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "WhitespaceSplit"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"hello": 0, "world": 1, "<unk>": 2, "[SEP]": 3}, "unk_token": "<unk>"}})";

TEST(TokenizerTest, EncodesWordLevelWithOffsets) {
  auto tokenizer = Tokenizer::FromJson(kWordLevel);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto encoding = (*tokenizer)->Encode("Hello  wörld[SEP]world");
  ASSERT_TRUE(encoding.ok()) << encoding.status();
  EXPECT_EQ(encoding->ids, (std::vector<uint32_t>{0, 2, 3, 1}));
  EXPECT_EQ(encoding->offsets[1], (Offsets{7, 13}));  // byte offsets of "wörld"
  EncodeOptions options;
  options.offset_type = OffsetType::kChar;
  encoding = (*tokenizer)->Encode("Hello  wörld[SEP]world", options);
  EXPECT_EQ(encoding->offsets[1], (Offsets{7, 12}));
  EXPECT_EQ(encoding->offsets[2], (Offsets{12, 17}));
}

TEST(TokenizerTest, EmptyTextGivesEmptyEncoding) {
  auto tokenizer = Tokenizer::FromJson(kWordLevel);
  ASSERT_TRUE(tokenizer.ok());
  auto encoding = (*tokenizer)->Encode("");
  ASSERT_TRUE(encoding.ok());
  EXPECT_TRUE(encoding->ids.empty());
}

TEST(TokenizerTest, RejectsInvalidUtf8NamingTheByteOffset) {
  auto tokenizer = Tokenizer::FromJson(kWordLevel);
  ASSERT_TRUE(tokenizer.ok());
  auto encoding = (*tokenizer)->Encode(std::string("abc\xC3(", 5));
  ASSERT_FALSE(encoding.ok());
  EXPECT_EQ(encoding.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(encoding.status().message().find("byte offset 3"), std::string::npos) << encoding.status();
}

TEST(TokenizerTest, LoadErrorsNameTheField) {
  auto missing = Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "x.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("model.merges[0]"), std::string::npos) << missing.status();
  auto bad_type = Tokenizer::FromJson(R"({"model": {"type": "WordLevel", "vocab": {}}, "normalizer": {"type": "Nope"}})");
  ASSERT_FALSE(bad_type.ok());
  EXPECT_NE(bad_type.status().message().find("normalizer.type: unsupported normalizer \"Nope\""), std::string::npos) << bad_type.status();
  auto not_json = Tokenizer::FromJson("{", "broken.json");
  ASSERT_FALSE(not_json.ok());
  EXPECT_NE(not_json.status().message().find("broken.json"), std::string::npos);
  // Found by tokenizer_fuzzer: a number too large for a double used to escape as an exception.
  auto overflow = Tokenizer::FromJson("8e8888", "overflow.json");
  ASSERT_FALSE(overflow.ok());
  EXPECT_EQ(overflow.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(overflow.status().message().find("number overflow"), std::string::npos) << overflow.status();
  auto no_file = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  EXPECT_EQ(no_file.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerTest, TenMegabytesInBoundedTime) {
  auto tokenizer = Tokenizer::FromJson(kWordLevel);
  ASSERT_TRUE(tokenizer.ok());
  std::string text;
  while (text.size() < 10'000'000) text += "hello world Привет 世界 ";
  auto start = std::chrono::steady_clock::now();
  auto encoding = (*tokenizer)->Encode(text);
  ASSERT_TRUE(encoding.ok());
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0);
  EXPECT_GT(encoding->size(), 1'000'000u);
}

TEST(UnicodeTest, LossyAndCompletePrefix) {
  EXPECT_EQ(Utf8Lossy("a\xF0\x9F\x98"), "a\xEF\xBF\xBD");
  EXPECT_EQ(Utf8Lossy("\xFF\xC3\xA9"), "\xEF\xBF\xBD\xC3\xA9");
  EXPECT_EQ(CompleteUtf8Prefix("ab\xF0\x9F"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xC3\xA9"), 4u);
  EXPECT_EQ(FindInvalidUtf8("\xED\xA0\x80"), 0u);  // a surrogate is not UTF-8
}

}  // namespace
}  // namespace flotilla::tokenizer
