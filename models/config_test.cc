#include "models/config.h"

#include <gtest/gtest.h>

#include "models/auto.h"
#include "models/rope.h"

namespace flotilla::models {
namespace {

TEST(ConfigTest, ReadsTypedFieldsAndKeepsUnknownKeys) {
  nlohmann::json json = {{"model_type", "llama"}, {"hidden_size", 64}, {"eos_token_id", {2, 7}},
                         {"rope_theta", 500000.0}, {"my_extension", {{"a", 1}}}};
  ConfigReader reader(json, "config.json");
  PretrainedConfig config;
  reader.Common(config);
  EXPECT_EQ(reader.Int("hidden_size", 4096), 64);
  EXPECT_EQ(reader.Int("intermediate_size", 11008), 11008);
  RopeParameters rope = ParseRopeParameters(reader, 10000.0, 2048);
  ASSERT_TRUE(reader.Finish(config).ok());
  EXPECT_EQ(config.eos_token_id, (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(rope.rope_type, "default");
  EXPECT_EQ(rope.rope_theta, 500000.0);
  EXPECT_EQ(config.unknown_keys, nlohmann::json({{"my_extension", {{"a", 1}}}}));
}

TEST(ConfigTest, TypeErrorsNameTheKey) {
  nlohmann::json json = {{"hidden_size", "wide"}};
  ConfigReader reader(json, "/m/config.json");
  reader.Int("hidden_size", 1);
  PretrainedConfig config;
  absl::Status status = reader.Finish(config);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "/m/config.json: key hidden_size: expected an integer but got \"wide\"");
}

TEST(ConfigTest, UnknownModelTypeListsKnownOnes) {
  auto model = ModelFromConfig({{"model_type", "wizard"}}, "/m/config.json");
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("model_type \"wizard\" is not supported (known: "), std::string::npos);
  EXPECT_NE(model.status().message().find("llama"), std::string::npos) << model.status();
}

TEST(ConfigTest, InconsistentSizesAreRejected) {
  auto model = ModelFromConfig({{"model_type", "llama"}, {"hidden_size", 30}, {"num_attention_heads", 4}},
                               "/m/config.json");
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("hidden_size (30) must be a multiple of num_attention_heads (4)"),
            std::string::npos)
      << model.status();
}

}  // namespace
}  // namespace flotilla::models
