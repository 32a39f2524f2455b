#include "services/preprocess/image/image_processor.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace flotilla::image {
namespace {

using Json = nlohmann::json;

TEST(SmartResizeTest, RoundsHalfToEvenLikePython) {
  // 42 / 28 = 1.5 rounds to 2 (even), 70 / 28 = 2.5 rounds to 2 (even), not 3.
  auto size = SmartResize(42 * 4, 70 * 4, 28, 56 * 56, 28 * 28 * 1280);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(size->first, 168);   // 168 / 28 = 6
  EXPECT_EQ(size->second, 280);  // 280 / 28 = 10
  size = SmartResize(42, 70, 28, 0, 1 << 30);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(size->first, 56);
  EXPECT_EQ(size->second, 56);
}

TEST(SmartResizeTest, ClampsToPixelRange) {
  auto size = SmartResize(4000, 3000, 28, 56 * 56, 28 * 28 * 1280);
  ASSERT_TRUE(size.ok());
  EXPECT_LE(size->first * size->second, 28 * 28 * 1280);
  EXPECT_EQ(size->first % 28, 0);
  size = SmartResize(10, 10, 28, 56 * 56, 28 * 28 * 1280);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(size->first, 56);
  EXPECT_EQ(size->second, 56);
  EXPECT_FALSE(SmartResize(1, 300, 28, 56 * 56, 28 * 28 * 1280).ok());
}

TEST(ImageProcessorConfigTest, DefaultsFollowTransformers) {
  auto clip = ParseImageProcessorConfig(Json{{"image_processor_type", "CLIPImageProcessorFast"},
                                             {"unknown_key", 1}});
  ASSERT_TRUE(clip.ok()) << clip.status();
  EXPECT_EQ(clip->family, ProcessorFamily::kClip);
  EXPECT_EQ(clip->size.shortest_edge, 224);
  EXPECT_TRUE(clip->do_center_crop);
  EXPECT_EQ(clip->resample, Resample::kBicubic);

  // An integer size is a shortest edge for CLIP (default_to_square=False), a square for ViT.
  clip = ParseImageProcessorConfig(Json{{"image_processor_type", "CLIPImageProcessor"}, {"size", 336}});
  ASSERT_TRUE(clip.ok());
  EXPECT_EQ(clip->size.shortest_edge, 336);
  auto vit = ParseImageProcessorConfig(Json{{"image_processor_type", "ViTImageProcessor"}, {"size", 384}});
  ASSERT_TRUE(vit.ok());
  EXPECT_EQ(vit->size.height, 384);
  EXPECT_EQ(vit->size.width, 384);

  auto qwen = ParseImageProcessorConfig(Json{{"image_processor_type", "Qwen2VLImageProcessor"},
                                             {"min_pixels", 1000}, {"max_pixels", 20000}});
  ASSERT_TRUE(qwen.ok());
  EXPECT_EQ(qwen->size.shortest_edge, 1000);
  EXPECT_EQ(qwen->size.longest_edge, 20000);
}

TEST(ImageProcessorConfigTest, ErrorsNameTheKey) {
  auto config = ParseImageProcessorConfig(Json{{"image_processor_type", "DetrImageProcessor"}});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kUnimplemented);
  config = ParseImageProcessorConfig(Json{{"image_processor_type", "ViTImageProcessor"}, {"do_resize", "yes"}});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("do_resize"), std::string::npos);
  config = ParseImageProcessorConfig(Json{{"image_processor_type", "ViTImageProcessor"}, {"image_mean", {1, 2}}});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("image_mean"), std::string::npos);
  EXPECT_FALSE(ParseImageProcessorConfig(Json{{"size", 3}}).ok());
}

TEST(ImageProcessorTest, ClipShapesAndQwenPatches) {
  auto clip = ImageProcessor::FromJson(Json{{"image_processor_type", "CLIPImageProcessor"}});
  ASSERT_TRUE(clip.ok());
  std::vector<torch::Tensor> images = {torch::randint(0, 256, {3, 300, 500}, torch::kUInt8),
                                       torch::randint(0, 256, {3, 90, 60}, torch::kUInt8)};
  auto processed = clip->Process(images, torch::kCPU);
  ASSERT_TRUE(processed.ok()) << processed.status();
  EXPECT_EQ(processed->pixel_values.sizes(), (std::vector<int64_t>{2, 3, 224, 224}));
  EXPECT_EQ(processed->pixel_values.scalar_type(), torch::kFloat32);

  auto qwen = ImageProcessor::FromJson(Json{{"image_processor_type", "Qwen2VLImageProcessor"}});
  ASSERT_TRUE(qwen.ok());
  processed = qwen->Process(images, torch::kCPU);
  ASSERT_TRUE(processed.ok()) << processed.status();
  // 300x500 -> 308x504 (11x18 of 28) -> grid 22x36; 90x60 -> 84x56 -> grid 6x4.
  EXPECT_EQ(processed->image_grid_thw.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(processed->image_grid_thw[0][1].item<int64_t>(), 22);
  EXPECT_EQ(processed->image_grid_thw[0][2].item<int64_t>(), 36);
  EXPECT_EQ(processed->image_grid_thw[1][1].item<int64_t>(), 6);
  EXPECT_EQ(processed->image_grid_thw[1][2].item<int64_t>(), 4);
  EXPECT_EQ(processed->pixel_values.sizes(), (std::vector<int64_t>{22 * 36 + 6 * 4, 1176}));
}

TEST(ImageProcessorTest, RejectsBadTensors) {
  auto vit = ImageProcessor::FromJson(Json{{"image_processor_type", "ViTImageProcessor"}});
  ASSERT_TRUE(vit.ok());
  auto processed = vit->Process({torch::zeros({4, 8, 8}, torch::kUInt8)}, torch::kCPU);
  ASSERT_FALSE(processed.ok());
  EXPECT_NE(processed.status().message().find("[3, H, W]"), std::string::npos);
  EXPECT_FALSE(vit->Process({}, torch::kCPU).ok());
}

}  // namespace
}  // namespace flotilla::image
