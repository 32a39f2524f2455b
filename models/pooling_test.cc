#include "models/pooling.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace flotilla::models {
namespace {

TEST(PoolingTest, MeanPoolingIgnoresPadding) {
  at::Tensor hidden = at::tensor({1.0f, 2.0f, 3.0f, 4.0f, 100.0f, 100.0f}).view({1, 3, 2});
  at::Tensor mask = at::tensor({1, 1, 0}, at::kLong).view({1, 3});
  at::Tensor pooled = MeanPooling(hidden, mask);
  EXPECT_TRUE(at::allclose(pooled, at::tensor({2.0f, 3.0f}).view({1, 2})));
}

TEST(PoolingTest, ClsPoolingTakesFirstTokenAfterLeftPadding) {
  at::Tensor hidden = at::arange(6, at::kFloat).view({1, 3, 2});
  at::Tensor mask = at::tensor({0, 1, 1}, at::kLong).view({1, 3});
  EXPECT_TRUE(at::equal(ClsPooling(hidden, mask), at::tensor({2.0f, 3.0f}).view({1, 2})));
}

TEST(PoolingTest, MaxPoolingIgnoresPadding) {
  at::Tensor hidden = at::tensor({1.0f, 5.0f, 3.0f, 4.0f, 100.0f, 100.0f}).view({1, 3, 2});
  at::Tensor mask = at::tensor({1, 1, 0}, at::kLong).view({1, 3});
  EXPECT_TRUE(at::equal(MaxPooling(hidden, mask), at::tensor({3.0f, 5.0f}).view({1, 2})));
}

TEST(PoolingTest, NormalizeGivesUnitLengthAndKeepsZero) {
  at::Tensor embeddings = at::tensor({3.0f, 4.0f, 0.0f, 0.0f}).view({2, 2});
  at::Tensor normalized = L2Normalize(embeddings);
  EXPECT_TRUE(at::allclose(normalized, at::tensor({0.6f, 0.8f, 0.0f, 0.0f}).view({2, 2})));
}

TEST(PoolingTest, ReadsSentenceTransformersModules) {
  const auto folder = std::filesystem::temp_directory_path() / "flotilla_pooling_test";
  std::filesystem::create_directories(folder / "1_Pooling");
  std::ofstream(folder / "modules.json")
      << R"([{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}])";
  std::ofstream(folder / "1_Pooling" / "config.json") << R"({"pooling_mode_cls_token": true})";
  std::ofstream(folder / "sentence_bert_config.json") << R"({"max_seq_length": 128})";
  auto config = ReadSentenceEmbeddingConfig(folder.string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->pooling_mode, "cls");
  EXPECT_FALSE(config->normalize);
  EXPECT_EQ(config->max_seq_length, 128);
  std::filesystem::remove_all(folder);
}

TEST(PoolingTest, PlainCheckpointGetsMeanAndNormalize) {
  auto config = ReadSentenceEmbeddingConfig(std::filesystem::temp_directory_path() / "flotilla_no_such_model");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->pooling_mode, "mean");
  EXPECT_TRUE(config->normalize);
}

}  // namespace
}  // namespace flotilla::models
