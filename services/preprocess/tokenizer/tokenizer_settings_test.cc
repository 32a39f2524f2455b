// LoadTokenizerSettings / LoadGenerationDefaults on small files written by each test.
#include "services/preprocess/tokenizer/tokenizer_settings.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace flotilla::tokenizer {
namespace {

namespace fs = std::filesystem;

constexpr char kTokenizerJson[] = R"({
  "version": "1.0",
  "added_tokens": [{"id": 3, "content": "<s>", "special": true}, {"id": 4, "content": "</s>", "special": true},
                   {"id": 5, "content": "<pad>", "special": true}],
  "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"hello": 0, "world": 1, "<unk>": 2, "<s>": 3, "</s>": 4, "<pad>": 5},
            "unk_token": "<unk>"}})";

class TokenizerSettingsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::path(::testing::TempDir()) /
                 ("tokenizer_settings_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(directory_);
    fs::create_directories(directory_);
    Write("tokenizer.json", kTokenizerJson);
    auto loaded = Tokenizer::FromDirectory(directory_.string());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = std::move(*loaded);
  }
  void TearDown() override { fs::remove_all(directory_); }

  void Write(const std::string& name, const std::string& text) {
    std::ofstream(directory_ / name) << text;
  }

  fs::path directory_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TokenizerSettingsTest, NoFilesGivesEmptySettings) {
  auto settings = LoadTokenizerSettings(directory_.string(), *tokenizer_);
  ASSERT_TRUE(settings.ok()) << settings.status();
  EXPECT_FALSE(settings->pad_token.has_value());
  EXPECT_FALSE(settings->eos_token.has_value());
  EXPECT_FALSE(settings->pad_left);
  EXPECT_FALSE(settings->has_chat_template);
  auto defaults = LoadGenerationDefaults(directory_.string());
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->source, "");
  EXPECT_TRUE(defaults->eos_token_ids.empty());
}

TEST_F(TokenizerSettingsTest, TokenizerConfigStringsAndAddedTokenObjects) {
  Write("tokenizer_config.json", R"({
    "bos_token": "<s>",
    "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": false},
    "pad_token": null, "unk_token": "<unk>",
    "padding_side": "left", "model_max_length": 2048, "add_bos_token": true, "add_eos_token": false,
    "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"})");
  auto settings = LoadTokenizerSettings(directory_.string(), *tokenizer_);
  ASSERT_TRUE(settings.ok()) << settings.status();
  ASSERT_TRUE(settings->bos_token.has_value());
  EXPECT_EQ(settings->bos_token->content, "<s>");
  EXPECT_EQ(settings->bos_token->id, 3u);
  EXPECT_EQ(settings->bos_token->source, "tokenizer_config.json");
  ASSERT_TRUE(settings->eos_token.has_value());
  EXPECT_EQ(settings->eos_token->content, "</s>");
  EXPECT_EQ(settings->eos_token->id, 4u);
  EXPECT_FALSE(settings->pad_token.has_value());
  EXPECT_EQ(settings->unk_token->id, 2u);
  EXPECT_TRUE(settings->pad_left);
  EXPECT_EQ(settings->model_max_length, 2048);
  EXPECT_EQ(settings->add_bos_token, true);
  EXPECT_EQ(settings->add_eos_token, false);
  EXPECT_TRUE(settings->has_chat_template);
}

TEST_F(TokenizerSettingsTest, SpecialTokensMapOverridesTokenizerConfig) {
  Write("tokenizer_config.json", R"({"pad_token": "</s>", "model_max_length": 1000000000000000019884624838656})");
  Write("special_tokens_map.json", R"({"pad_token": {"content": "<pad>", "single_word": false}})");
  auto settings = LoadTokenizerSettings(directory_.string(), *tokenizer_);
  ASSERT_TRUE(settings.ok()) << settings.status();
  ASSERT_TRUE(settings->pad_token.has_value());
  EXPECT_EQ(settings->pad_token->id, 5u);
  EXPECT_EQ(settings->pad_token->source, "special_tokens_map.json");
  EXPECT_FALSE(settings->model_max_length.has_value());  // transformers' "no limit" sentinel
}

TEST_F(TokenizerSettingsTest, ConfigJsonIdsAreTheLastFallback) {
  Write("config.json", R"({"pad_token_id": 5, "text_config": {"bos_token_id": 3}})");
  auto settings = LoadTokenizerSettings(directory_.string(), *tokenizer_);
  ASSERT_TRUE(settings.ok()) << settings.status();
  ASSERT_TRUE(settings->pad_token.has_value());
  EXPECT_EQ(settings->pad_token->id, 5u);
  EXPECT_EQ(settings->pad_token->content, "<pad>");
  EXPECT_EQ(settings->pad_token->source, "config.json");
  ASSERT_TRUE(settings->bos_token.has_value());
  EXPECT_EQ(settings->bos_token->id, 3u);
}

TEST_F(TokenizerSettingsTest, TokenOutsideTheVocabularyHasNoId) {
  Write("tokenizer_config.json", R"({"pad_token": "[PAD]"})");
  auto settings = LoadTokenizerSettings(directory_.string(), *tokenizer_);
  ASSERT_TRUE(settings.ok());
  ASSERT_TRUE(settings->pad_token.has_value());
  EXPECT_EQ(settings->pad_token->content, "[PAD]");
  EXPECT_FALSE(settings->pad_token->id.has_value());
}

TEST_F(TokenizerSettingsTest, ChatTemplateFileCounts) {
  Write("chat_template.jinja", "{{ messages }}");
  auto settings = LoadTokenizerSettings(directory_.string(), *tokenizer_);
  ASSERT_TRUE(settings.ok());
  EXPECT_TRUE(settings->has_chat_template);
}

TEST_F(TokenizerSettingsTest, MalformedFilesAndValuesAreErrors) {
  Write("tokenizer_config.json", R"({"padding_side": "middle"})");
  auto settings = LoadTokenizerSettings(directory_.string(), *tokenizer_);
  ASSERT_FALSE(settings.ok());
  EXPECT_NE(settings.status().message().find("padding_side"), std::string::npos);
  Write("tokenizer_config.json", "{not json");
  settings = LoadTokenizerSettings(directory_.string(), *tokenizer_);
  ASSERT_FALSE(settings.ok());
  EXPECT_NE(settings.status().message().find("tokenizer_config.json"), std::string::npos);
}

TEST_F(TokenizerSettingsTest, GenerationConfig) {
  Write("generation_config.json", R"({"bos_token_id": 3, "eos_token_id": [4, 5], "pad_token_id": 5,
      "do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
      "max_new_tokens": 512, "max_length": 4096})");
  Write("config.json", R"({"eos_token_id": 9})");
  auto defaults = LoadGenerationDefaults(directory_.string());
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->source, "generation_config.json");
  EXPECT_EQ(defaults->eos_token_ids, (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(defaults->bos_token_id, 3);
  EXPECT_EQ(defaults->pad_token_id, 5);
  EXPECT_EQ(defaults->do_sample, true);
  EXPECT_DOUBLE_EQ(*defaults->temperature, 0.7);
  EXPECT_DOUBLE_EQ(*defaults->top_p, 0.8);
  EXPECT_EQ(defaults->top_k, 20);
  EXPECT_DOUBLE_EQ(*defaults->repetition_penalty, 1.05);
  EXPECT_EQ(defaults->max_new_tokens, 512);
  EXPECT_EQ(defaults->max_length, 4096);
}

TEST_F(TokenizerSettingsTest, GenerationDefaultsFallBackToConfigJson) {
  Write("config.json", R"({"eos_token_id": 4, "bos_token_id": 3})");
  auto defaults = LoadGenerationDefaults(directory_.string());
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->source, "config.json");
  EXPECT_EQ(defaults->eos_token_ids, std::vector<int64_t>{4});
  EXPECT_EQ(defaults->bos_token_id, 3);
  EXPECT_FALSE(defaults->temperature.has_value());
}

}  // namespace
}  // namespace flotilla::tokenizer
