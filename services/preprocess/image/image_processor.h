// Image processors read from a Hugging Face `preprocessor_config.json`, computing the same
// `pixel_values` as transformers' fast (torchvision-backed) image processors: ViT, CLIP, SigLIP and
// Qwen2-VL. Every step is a batched LibTorch op, so the same code runs on CPU and CUDA.
//
//   absl::StatusOr<ImageProcessor> processor = ImageProcessor::FromFile("model/preprocessor_config.json");
//   std::vector<torch::Tensor> images = ...;   // uint8 [3, H, W], e.g. from ImageTensor(DecodeImage(bytes))
//   absl::StatusOr<ProcessedImages> batch = processor->Process(images, torch::kCPU);
//   // batch->pixel_values: [N, 3, 224, 224] float32 (CLIP), or [sum(t*h*w), 1176] (Qwen2-VL)
//   // batch->image_grid_thw: [N, 3] int64 (Qwen2-VL only; undefined otherwise)
//
// The pipeline, step by step as transformers 5.23's TorchvisionBackend._preprocess runs it (read
// image_processor.cc beside transformers/image_processing_backends.py): group images by shape,
// resize with torchvision's resize_image (ATen's antialiased bilinear/bicubic, on uint8 where
// torchvision keeps uint8 on that device), center crop, then rescale and normalize fused in float32
// (mean and std divided by rescale_factor), pad; Qwen2-VL replaces resize's size rule by
// smart_resize and ends with patchify.
//
// Thread-safety: an ImageProcessor is immutable after FromJson; Process may run concurrently.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>
#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "services/preprocess/image/decode.h"

namespace flotilla::image {

// PIL's resampling constants, the integers preprocessor_config.json stores under "resample".
enum class Resample { kNearest = 0, kLanczos = 1, kBilinear = 2, kBicubic = 3, kBox = 4, kHamming = 5 };

// transformers' SizeDict: which keys are set decides how a size is read.
struct SizeDict {
  std::optional<int64_t> height, width, shortest_edge, longest_edge, max_height, max_width;
};

// The processor families implemented, by `image_processor_type` (with or without "Fast").
enum class ProcessorFamily { kVit, kClip, kSiglip, kQwen2Vl };

struct ImageProcessorConfig {
  ProcessorFamily family = ProcessorFamily::kClip;
  std::string image_processor_type;
  bool do_resize = true;
  bool do_center_crop = false;
  bool do_rescale = true;
  bool do_normalize = true;
  bool do_convert_rgb = true;
  bool do_pad = false;
  SizeDict size;
  std::optional<SizeDict> crop_size;
  std::optional<SizeDict> pad_size;
  Resample resample = Resample::kBilinear;
  double rescale_factor = 1.0 / 255.0;
  std::vector<double> image_mean, image_std;
  // Qwen2-VL only.
  int64_t patch_size = 14;
  int64_t temporal_patch_size = 2;
  int64_t merge_size = 2;
};

// Parses preprocessor_config.json with transformers' defaults for the family; unknown keys are
// ignored, as transformers ignores them. Fails for an unknown image_processor_type or a malformed
// value (naming the key).
absl::StatusOr<ImageProcessorConfig> ParseImageProcessorConfig(const nlohmann::json& json);

struct ProcessedImages {
  torch::Tensor pixel_values;
  torch::Tensor image_grid_thw;  // Qwen2-VL only
};

// Qwen2-VL's smart_resize: (height, width) rounded to multiples of `factor` (Python's round,
// half to even) with height*width kept within [min_pixels, max_pixels].
absl::StatusOr<std::pair<int64_t, int64_t>> SmartResize(int64_t height, int64_t width, int64_t factor,
                                                         int64_t min_pixels, int64_t max_pixels);

// torchvision.transforms.v2.functional.resize_image on a [N, C, H, W] tensor, antialiased.
torch::Tensor ResizeLikeTorchvision(const torch::Tensor& images, int64_t height, int64_t width,
                                    Resample resample);

// A decoded picture as a uint8 [3, H, W] tensor (contiguous, CPU).
torch::Tensor ImageTensor(const DecodedImage& image);

// Decodes every file's bytes in parallel on at::get_num_threads() threads, as ProcessEncoded does.
// The first failure is returned, naming the image's index.
absl::StatusOr<std::vector<DecodedImage>> DecodeImages(const std::vector<std::string>& encoded_images,
                                                       const DecodeOptions& options = {});

class ImageProcessor {
 public:
  static absl::StatusOr<ImageProcessor> FromJson(const nlohmann::json& json);
  static absl::StatusOr<ImageProcessor> FromFile(const std::string& path);
  // A model folder's image processor, found as AutoImageProcessor finds it: preprocessor_config.json
  // (the Hub's layout), else the "image_processor" object of processor_config.json (all that
  // transformers 5's ProcessorMixin.save_pretrained writes, e.g. for CLIPProcessor). NotFound
  // naming both files when neither holds one.
  static absl::StatusOr<ImageProcessor> FromDirectory(const std::string& directory);
  explicit ImageProcessor(ImageProcessorConfig config) : config_(std::move(config)) {}

  const ImageProcessorConfig& config() const { return config_; }

  // images: uint8 [3, H, W] tensors of any sizes. Output on `device`.
  absl::StatusOr<ProcessedImages> Process(const std::vector<torch::Tensor>& images,
                                          const torch::Device& device) const;

  // Decodes every file's bytes (in parallel, at::get_num_threads() threads) and processes them.
  absl::StatusOr<ProcessedImages> ProcessEncoded(const std::vector<std::string>& encoded_images,
                                                 const torch::Device& device,
                                                 const DecodeOptions& options = {}) const;

 private:
  ImageProcessorConfig config_;
};

}  // namespace flotilla::image
