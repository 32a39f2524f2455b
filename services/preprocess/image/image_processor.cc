#include "services/preprocess/image/image_processor.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <c10/util/ParallelGuard.h>

#include <atomic>
#include <thread>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "services/preprocess/image/resample.h"

namespace flotilla::image {
namespace {

using Json = nlohmann::json;

// transformers/image_utils.py
const std::vector<double> kImagenetStandardMean = {0.5, 0.5, 0.5};
const std::vector<double> kImagenetStandardStd = {0.5, 0.5, 0.5};
const std::vector<double> kOpenAiClipMean = {0.48145466, 0.4578275, 0.40821073};
const std::vector<double> kOpenAiClipStd = {0.26862954, 0.26130258, 0.27577711};

// The class attributes of each transformers processor (models/<name>/image_processing_<name>.py).
struct FamilyDefaults {
  ImageProcessorConfig config;
  bool default_to_square;
};

absl::StatusOr<FamilyDefaults> DefaultsFor(std::string_view type) {
  if (type.ends_with("Fast")) type.remove_suffix(4);
  FamilyDefaults defaults;
  ImageProcessorConfig& config = defaults.config;
  if (type == "ViTImageProcessor") {
    config.family = ProcessorFamily::kVit;
    config.resample = Resample::kBilinear;
    config.image_mean = kImagenetStandardMean;
    config.image_std = kImagenetStandardStd;
    config.size.height = config.size.width = 224;
    defaults.default_to_square = true;
  } else if (type == "CLIPImageProcessor") {
    config.family = ProcessorFamily::kClip;
    config.resample = Resample::kBicubic;
    config.image_mean = kOpenAiClipMean;
    config.image_std = kOpenAiClipStd;
    config.size.shortest_edge = 224;
    config.do_center_crop = true;
    config.crop_size = SizeDict{.height = 224, .width = 224};
    defaults.default_to_square = false;
  } else if (type == "SiglipImageProcessor") {
    config.family = ProcessorFamily::kSiglip;
    config.resample = Resample::kBicubic;
    config.image_mean = kImagenetStandardMean;
    config.image_std = kImagenetStandardStd;
    config.size.height = config.size.width = 224;
    defaults.default_to_square = false;
  } else if (type == "Qwen2VLImageProcessor") {
    config.family = ProcessorFamily::kQwen2Vl;
    config.resample = Resample::kBicubic;
    config.image_mean = kOpenAiClipMean;
    config.image_std = kOpenAiClipStd;
    config.size.shortest_edge = 56 * 56;
    config.size.longest_edge = 28 * 28 * 1280;
    defaults.default_to_square = false;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "ParseImageProcessorConfig: image_processor_type \"", std::string(type),
        "\" is not implemented; expected ViTImageProcessor, CLIPImageProcessor, "
        "SiglipImageProcessor or Qwen2VLImageProcessor (with or without \"Fast\")"));
  }
  defaults.config.image_processor_type = std::string(type);
  return defaults;
}

absl::Status KeyError(std::string_view key, const Json& value, std::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat("ParseImageProcessorConfig: key \"", std::string(key),
                                                 "\": expected ", std::string(expected), " but got ", value.dump()));
}

// transformers' get_size_dict: an int is a square (default_to_square) or a shortest edge, a pair is
// (height, width), a dict names its keys.
absl::StatusOr<SizeDict> ParseSize(std::string_view key, const Json& value, bool default_to_square) {
  SizeDict size;
  if (value.is_number_integer()) {
    if (default_to_square) {
      size.height = size.width = value.get<int64_t>();
    } else {
      size.shortest_edge = value.get<int64_t>();
    }
    return size;
  }
  if (value.is_array() && value.size() == 2 && value[0].is_number_integer() &&
      value[1].is_number_integer()) {
    size.height = value[0].get<int64_t>();
    size.width = value[1].get<int64_t>();
    return size;
  }
  if (!value.is_object()) return KeyError(key, value, "an integer, [height, width] or a dict");
  for (const auto& [name, entry] : value.items()) {
    if (entry.is_null()) continue;
    if (!entry.is_number_integer()) return KeyError(absl::StrCat(std::string(key), ".", name), entry, "an integer");
    const int64_t number = entry.get<int64_t>();
    if (name == "height") size.height = number;
    else if (name == "width") size.width = number;
    else if (name == "shortest_edge" || name == "min_pixels") size.shortest_edge = number;
    else if (name == "longest_edge" || name == "max_pixels") size.longest_edge = number;
    else if (name == "max_height") size.max_height = number;
    else if (name == "max_width") size.max_width = number;
    else return KeyError(absl::StrCat(std::string(key), ".", name), entry, "one of height, width, shortest_edge, "
                         "longest_edge, max_height, max_width");
  }
  return size;
}

absl::Status ReadBool(const Json& json, std::string_view key, bool& target) {
  auto found = json.find(key);
  if (found == json.end() || found->is_null()) return absl::OkStatus();
  if (!found->is_boolean()) return KeyError(key, *found, "true or false");
  target = found->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadInt(const Json& json, std::string_view key, int64_t& target) {
  auto found = json.find(key);
  if (found == json.end() || found->is_null()) return absl::OkStatus();
  if (!found->is_number_integer()) return KeyError(key, *found, "an integer");
  target = found->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadChannelValues(const Json& json, std::string_view key, std::vector<double>& target) {
  auto found = json.find(key);
  if (found == json.end() || found->is_null()) return absl::OkStatus();
  if (found->is_number()) {
    target.assign(3, found->get<double>());
    return absl::OkStatus();
  }
  if (!found->is_array() || found->size() != 3) return KeyError(key, *found, "a number or 3 numbers");
  target.clear();
  for (const Json& entry : *found) {
    if (!entry.is_number()) return KeyError(key, *found, "a number or 3 numbers");
    target.push_back(entry.get<double>());
  }
  return absl::OkStatus();
}

#define FLOTILLA_RETURN_IF_ERROR(expression)               \
  do {                                                     \
    if (absl::Status status_ = (expression); !status_.ok()) \
      return status_;                                      \
  } while (false)

// get_resize_output_image_size with default_to_square=False and no max_size.
std::pair<int64_t, int64_t> ShortestEdgeSize(int64_t height, int64_t width, int64_t shortest_edge) {
  const bool portrait = width <= height;
  const int64_t short_side = portrait ? width : height;
  const int64_t long_side = portrait ? height : width;
  // Python: int(requested_new_short * long / short), a correctly rounded double then truncation.
  const auto new_long = static_cast<int64_t>(static_cast<double>(shortest_edge * long_side) /
                                             static_cast<double>(short_side));
  return portrait ? std::pair{new_long, shortest_edge} : std::pair{shortest_edge, new_long};
}

// get_size_with_aspect_ratio (DETR-style shortest_edge + longest_edge).
std::pair<int64_t, int64_t> AspectRatioSize(int64_t height, int64_t width, int64_t size,
                                            int64_t max_size) {
  double raw_size = 0;
  bool has_raw = false;
  const double min_original = static_cast<double>(std::min(height, width));
  const double max_original = static_cast<double>(std::max(height, width));
  if (max_original / min_original * static_cast<double>(size) > static_cast<double>(max_size)) {
    raw_size = static_cast<double>(max_size) * min_original / max_original;
    size = static_cast<int64_t>(std::nearbyint(raw_size));
    has_raw = true;
  }
  int64_t out_height, out_width;
  if ((height <= width && height == size) || (width <= height && width == size)) {
    out_height = height;
    out_width = width;
  } else if (width < height) {
    out_width = size;
    out_height = has_raw ? static_cast<int64_t>(raw_size * static_cast<double>(height) / static_cast<double>(width))
                         : static_cast<int64_t>(static_cast<double>(size * height) / static_cast<double>(width));
  } else {
    out_height = size;
    out_width = has_raw ? static_cast<int64_t>(raw_size * static_cast<double>(width) / static_cast<double>(height))
                        : static_cast<int64_t>(static_cast<double>(size * width) / static_cast<double>(height));
  }
  return {out_height, out_width};
}

// get_image_size_for_max_height_width.
std::pair<int64_t, int64_t> MaxHeightWidthSize(int64_t height, int64_t width, int64_t max_height,
                                               int64_t max_width) {
  const double height_scale = static_cast<double>(max_height) / static_cast<double>(height);
  const double width_scale = static_cast<double>(max_width) / static_cast<double>(width);
  const double min_scale = std::min(height_scale, width_scale);
  return {static_cast<int64_t>(static_cast<double>(height) * min_scale),
          static_cast<int64_t>(static_cast<double>(width) * min_scale)};
}

absl::StatusOr<std::pair<int64_t, int64_t>> ResizeTarget(const ImageProcessorConfig& config,
                                                         int64_t height, int64_t width) {
  const SizeDict& size = config.size;
  if (config.family == ProcessorFamily::kQwen2Vl) {
    if (!size.shortest_edge || !size.longest_edge) {
      return absl::InvalidArgumentError(
          "Qwen2VLImageProcessor: size must contain shortest_edge and longest_edge");
    }
    return SmartResize(height, width, config.patch_size * config.merge_size, *size.shortest_edge,
                       *size.longest_edge);
  }
  if (size.shortest_edge && size.longest_edge) {
    return AspectRatioSize(height, width, *size.shortest_edge, *size.longest_edge);
  }
  if (size.shortest_edge) return ShortestEdgeSize(height, width, *size.shortest_edge);
  if (size.max_height && size.max_width) {
    return MaxHeightWidthSize(height, width, *size.max_height, *size.max_width);
  }
  if (size.height && size.width) return std::pair{*size.height, *size.width};
  return absl::InvalidArgumentError(
      "ImageProcessor: size must contain height and width, max_height and max_width, or shortest_edge");
}

// TorchvisionBackend.center_crop: pad with zeros when the crop is larger, then int() offsets.
torch::Tensor CenterCrop(torch::Tensor images, int64_t crop_height, int64_t crop_width) {
  int64_t height = images.size(-2), width = images.size(-1);
  if (crop_width > width || crop_height > height) {
    const int64_t left = crop_width > width ? (crop_width - width) / 2 : 0;
    const int64_t top = crop_height > height ? (crop_height - height) / 2 : 0;
    const int64_t right = crop_width > width ? (crop_width - width + 1) / 2 : 0;
    const int64_t bottom = crop_height > height ? (crop_height - height + 1) / 2 : 0;
    images = at::constant_pad_nd(images, {left, right, top, bottom}, 0);
    height = images.size(-2);
    width = images.size(-1);
    if (crop_width == width && crop_height == height) return images;
  }
  const auto top = static_cast<int64_t>(static_cast<double>(height - crop_height) / 2.0);
  const auto left = static_cast<int64_t>(static_cast<double>(width - crop_width) / 2.0);
  return images.slice(-2, top, top + crop_height).slice(-1, left, left + crop_width);
}

// Qwen2VLImageProcessor.patchify: each picture is one frame repeated temporal_patch_size times.
torch::Tensor Patchify(const torch::Tensor& images, int64_t patch_size, int64_t merge_size,
                       int64_t temporal_patch_size) {
  const int64_t batch = images.size(0), channels = images.size(1);
  const int64_t grid_height = images.size(2) / patch_size, grid_width = images.size(3) / patch_size;
  torch::Tensor patches = images.reshape({batch, channels, grid_height / merge_size, merge_size,
                                          patch_size, grid_width / merge_size, merge_size, patch_size});
  patches = patches.permute({0, 2, 5, 3, 6, 1, 4, 7});
  return patches.unsqueeze(6)
      .expand({-1, -1, -1, -1, -1, -1, temporal_patch_size, -1, -1})
      .reshape({batch, grid_height * grid_width, channels * temporal_patch_size * patch_size * patch_size});
}

struct NormalizeConstants {
  torch::Tensor mean, std;  // [3, 1, 1] float32, or undefined
  bool rescale_only = false;
};

// TorchvisionBackend._fuse_mean_std_and_rescale_factor, with the same tensor ops so the float32
// constants are bit-identical: torch.tensor(mean) * (1.0 / rescale_factor).
NormalizeConstants FuseConstants(const ImageProcessorConfig& config, const torch::Device& device) {
  NormalizeConstants constants;
  if (config.do_normalize) {
    auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    constants.mean = torch::tensor(config.image_mean, torch::kFloat64).to(options);
    constants.std = torch::tensor(config.image_std, torch::kFloat64).to(options);
    if (config.do_rescale) {
      constants.mean = constants.mean * (1.0 / config.rescale_factor);
      constants.std = constants.std * (1.0 / config.rescale_factor);
    }
    constants.mean = constants.mean.view({-1, 1, 1});
    constants.std = constants.std.view({-1, 1, 1});
  } else if (config.do_rescale) {
    constants.rescale_only = true;
  }
  return constants;
}

// Runs work(index) for index in [0, count) on up to at::get_num_threads() threads, the caller
// included. Pictures are independent, so this is where the parallelism is; each worker marks itself
// as inside a parallel region (c10::ParallelGuard) so the ATen ops it calls run inline instead of
// starting OpenMP teams of their own. Plain threads rather than at::parallel_for: on a loaded
// machine OpenMP's spinning barriers cost more than the work (measured 4x slower on 2 busy cores).
template <typename Work>
void ParallelForEachImage(size_t count, const Work& work) {
  const size_t workers = std::min<size_t>(count, static_cast<size_t>(std::max(1, at::get_num_threads())));
  std::atomic<size_t> next{0};
  auto drain = [&] {
    c10::ParallelGuard guard(true);
    for (size_t index = next++; index < count; index = next++) work(index);
  };
  std::vector<std::thread> threads;
  for (size_t worker = 1; worker < workers; ++worker) threads.emplace_back(drain);
  drain();
  for (std::thread& thread : threads) thread.join();
}

// The CPU fast path for resize (+ center crop) + rescale/normalize: the same bytes as ATen's
// antialiased uint8 kernels (resample.h), computed only for the pixels the crop keeps, then one
// table lookup per byte for rescale + normalize, written straight into the batch tensor.
struct FastPlan {
  bool usable = false;
  ResampleFilter filter = ResampleFilter::kBicubic;
  int64_t out_height = 0, out_width = 0;  // crop size, or the fixed resize size without crop
};

FastPlan PlanFastPath(const ImageProcessorConfig& config, const torch::Device& device) {
  FastPlan plan;
  if (!device.is_cpu() || !config.do_resize || config.do_pad || config.family == ProcessorFamily::kQwen2Vl) return plan;
  if (!config.do_rescale && !config.do_normalize) return plan;  // uint8 output: general path
  if (config.resample == Resample::kBicubic) {
    plan.filter = ResampleFilter::kBicubic;
  } else if (config.resample == Resample::kBilinear) {
    // torchvision resizes uint8 bilinear natively only with AVX2/AVX512.
    const std::string capability = at::get_cpu_capability();
    if (capability != "AVX2" && capability != "AVX512") return plan;
    plan.filter = ResampleFilter::kBilinear;
  } else {
    return plan;
  }
  const SizeDict& size = config.size;
  const bool fixed = size.height && size.width && !size.shortest_edge && !size.longest_edge && !size.max_height;
  const bool shortest = size.shortest_edge && !size.longest_edge && !size.max_height;
  if (config.do_center_crop) {
    const int64_t crop_height = *config.crop_size->height, crop_width = *config.crop_size->width;
    if (crop_height <= 0 || crop_width <= 0) return plan;
    // The crop must never need padding: it fits in every possible resize.
    if (fixed && (crop_height > *size.height || crop_width > *size.width)) return plan;
    if (shortest && (crop_height > *size.shortest_edge || crop_width > *size.shortest_edge)) return plan;
    if (!fixed && !shortest) return plan;
    plan.out_height = crop_height;
    plan.out_width = crop_width;
  } else {
    if (!fixed || *size.height <= 0 || *size.width <= 0) return plan;
    plan.out_height = *size.height;
    plan.out_width = *size.width;
  }
  plan.usable = true;
  return plan;
}

// Axis weights cost ~30 us to make; pictures of one size share them. Per thread. A reference
// CachedAxis returns stays valid until the thread's next TrimAxisCache, which each picture calls
// before its first lookup (so a picture's axes never dangle, and the cache stays bounded).
using AxisCache = std::map<std::tuple<int64_t, int64_t, ResampleFilter>, ResampleAxis>;
AxisCache& ThreadAxisCache() {
  thread_local AxisCache cache;
  return cache;
}

void TrimAxisCache() {
  if (ThreadAxisCache().size() >= 64) ThreadAxisCache().clear();
}

const ResampleAxis& CachedAxis(int64_t input_size, int64_t output_size, ResampleFilter filter) {
  AxisCache& cache = ThreadAxisCache();
  const auto key = std::tuple{input_size, output_size, filter};
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  return cache.emplace(key, MakeResampleAxis(input_size, output_size, filter)).first->second;
}

// Scratch buffers reused by every picture a thread processes.
struct FastScratch {
  std::vector<uint8_t> padded_row, intermediate, output_row;
};

// Resizes `image` to `target` (height, width), keeps the rows/columns [top, top + out_height) x
// [left, left + out_width), maps each byte through `lut` ([3][256] floats) into `output`
// ([3, out_height, out_width] float32, contiguous). Returns false (nothing written) when ATen's
// weights cannot be reproduced for this size, so the caller uses the general path.
// torchvision's center_crop offset along one axis (the plan guarantees the crop fits).
int64_t CenterCropOffset(int64_t resized, int64_t cropped) {
  return static_cast<int64_t>(static_cast<double>(resized - cropped) / 2.0);
}

// The input columns FastResizeCropNormalize will read for a height x width picture: those under
// the crop's output columns, each with the kernel's padded taps. All of them where the fast path
// will not run, so that the general path gets a whole picture.
std::pair<int64_t, int64_t> ColumnsTheFastPathReads(const ImageProcessorConfig& config, const FastPlan& plan,
                                                    int64_t height, int64_t width) {
  absl::StatusOr<std::pair<int64_t, int64_t>> target = ResizeTarget(config, height, width);
  if (!target.ok() || target->first <= 0 || target->second <= 0) return {0, width};
  const ResampleAxis& columns = CachedAxis(width, target->second, plan.filter);
  const ResampleAxis& rows = CachedAxis(height, target->first, plan.filter);
  if (!columns.exact || !rows.exact) return {0, width};
  const int64_t left = CenterCropOffset(target->second, plan.out_width);
  int64_t first = width, last = 0;
  for (int64_t x = left; x < left + plan.out_width; ++x) {
    first = std::min<int64_t>(first, columns.first[x]);
    last = std::max<int64_t>(last, columns.first[x] + columns.taps_padded);
  }
  return {first, std::min(last, width)};
}

bool FastResizeCropNormalize(const DecodedImage& image, std::pair<int64_t, int64_t> target, int64_t top,
                             int64_t left, const FastPlan& plan, const float* lut, float* output,
                             FastScratch& scratch) {
  const int64_t picture_width = image.picture_width > 0 ? image.picture_width : image.width;
  const ResampleAxis& columns = CachedAxis(picture_width, target.second, plan.filter);
  const ResampleAxis& rows = CachedAxis(image.height, target.first, plan.filter);
  if (!columns.exact || !rows.exact) return false;
  const int64_t out_height = plan.out_height, out_width = plan.out_width;
  int64_t row_begin = image.height, row_end = 0;
  for (int64_t y = top; y < top + out_height; ++y) {
    row_begin = std::min<int64_t>(row_begin, rows.first[y]);
    row_end = std::max<int64_t>(row_end, rows.first[y] + rows.count[y]);
  }
  const int64_t row_bytes = (out_width * 4 + 15) / 16 * 16;
  scratch.intermediate.resize(static_cast<size_t>((row_end - row_begin) * row_bytes));
  const int64_t input_row_bytes = image.width * 3;
  const int64_t overread = HorizontalOverreadBytes(columns);
  const auto buffer_size = static_cast<int64_t>(image.pixels.size());
  for (int64_t y = row_begin; y < row_end; ++y) {
    const uint8_t* source = image.pixels.data() + y * input_row_bytes;
    if (y * input_row_bytes + input_row_bytes + overread > buffer_size) {
      scratch.padded_row.assign(static_cast<size_t>(input_row_bytes + overread), 0);
      std::memcpy(scratch.padded_row.data(), source, static_cast<size_t>(input_row_bytes));
      source = scratch.padded_row.data();
    }
    ResampleRowHorizontally(source, columns, left, left + out_width,
                            scratch.intermediate.data() + (y - row_begin) * row_bytes, image.first_column);
  }
  scratch.output_row.resize(static_cast<size_t>(row_bytes));
  const int64_t plane = out_height * out_width;
  for (int64_t y = 0; y < out_height; ++y) {
    ResampleRowVertically(scratch.intermediate.data(), row_begin, row_bytes, row_bytes, rows, top + y,
                          scratch.output_row.data());
    const uint8_t* pixel = scratch.output_row.data();
    float* red = output + y * out_width;
    float* green = red + plane;
    float* blue = green + plane;
    for (int64_t x = 0; x < out_width; ++x, pixel += 4) {
      red[x] = lut[pixel[0]];
      green[x] = lut[256 + pixel[1]];
      blue[x] = lut[512 + pixel[2]];
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<ImageProcessorConfig> ParseImageProcessorConfig(const Json& json) {
  if (!json.is_object()) return KeyError("(root)", json, "a JSON object");
  std::string type;
  if (auto found = json.find("image_processor_type"); found != json.end() && found->is_string()) {
    type = found->get<std::string>();
  } else {
    return absl::InvalidArgumentError(
        "ParseImageProcessorConfig: image_processor_type is missing (expected e.g. \"CLIPImageProcessor\")");
  }
  absl::StatusOr<FamilyDefaults> defaults = DefaultsFor(type);
  if (!defaults.ok()) return defaults.status();
  ImageProcessorConfig config = defaults->config;
  FLOTILLA_RETURN_IF_ERROR(ReadBool(json, "do_resize", config.do_resize));
  FLOTILLA_RETURN_IF_ERROR(ReadBool(json, "do_center_crop", config.do_center_crop));
  FLOTILLA_RETURN_IF_ERROR(ReadBool(json, "do_rescale", config.do_rescale));
  FLOTILLA_RETURN_IF_ERROR(ReadBool(json, "do_normalize", config.do_normalize));
  FLOTILLA_RETURN_IF_ERROR(ReadBool(json, "do_convert_rgb", config.do_convert_rgb));
  FLOTILLA_RETURN_IF_ERROR(ReadBool(json, "do_pad", config.do_pad));
  FLOTILLA_RETURN_IF_ERROR(ReadChannelValues(json, "image_mean", config.image_mean));
  FLOTILLA_RETURN_IF_ERROR(ReadChannelValues(json, "image_std", config.image_std));
  if (auto found = json.find("rescale_factor"); found != json.end() && !found->is_null()) {
    if (!found->is_number()) return KeyError("rescale_factor", *found, "a number");
    config.rescale_factor = found->get<double>();
  }
  if (auto found = json.find("resample"); found != json.end() && !found->is_null()) {
    if (!found->is_number_integer() || found->get<int64_t>() < 0 || found->get<int64_t>() > 5) {
      return KeyError("resample", *found, "a PIL resampling filter 0..5");
    }
    config.resample = static_cast<Resample>(found->get<int>());
  }
  if (auto found = json.find("size"); found != json.end() && !found->is_null()) {
    absl::StatusOr<SizeDict> size = ParseSize("size", *found, defaults->default_to_square);
    if (!size.ok()) return size.status();
    config.size = *size;
  }
  if (auto found = json.find("crop_size"); found != json.end() && !found->is_null()) {
    absl::StatusOr<SizeDict> size = ParseSize("crop_size", *found, /*default_to_square=*/true);
    if (!size.ok()) return size.status();
    config.crop_size = *size;
  }
  if (auto found = json.find("pad_size"); found != json.end() && !found->is_null()) {
    absl::StatusOr<SizeDict> size = ParseSize("pad_size", *found, /*default_to_square=*/true);
    if (!size.ok()) return size.status();
    config.pad_size = *size;
  }
  if (config.family == ProcessorFamily::kQwen2Vl) {
    // Qwen2VLImageProcessor.__init__: top-level min_pixels / max_pixels override size.
    int64_t pixels = 0;
    if (json.contains("min_pixels") && !json["min_pixels"].is_null()) {
      FLOTILLA_RETURN_IF_ERROR(ReadInt(json, "min_pixels", pixels));
      config.size.shortest_edge = pixels;
    }
    if (json.contains("max_pixels") && !json["max_pixels"].is_null()) {
      FLOTILLA_RETURN_IF_ERROR(ReadInt(json, "max_pixels", pixels));
      config.size.longest_edge = pixels;
    }
    FLOTILLA_RETURN_IF_ERROR(ReadInt(json, "patch_size", config.patch_size));
    FLOTILLA_RETURN_IF_ERROR(ReadInt(json, "temporal_patch_size", config.temporal_patch_size));
    FLOTILLA_RETURN_IF_ERROR(ReadInt(json, "merge_size", config.merge_size));
    if (config.patch_size <= 0 || config.merge_size <= 0 || config.temporal_patch_size <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ParseImageProcessorConfig: patch_size, merge_size and temporal_patch_size must be positive; got ",
          config.patch_size, ", ", config.merge_size, ", ", config.temporal_patch_size));
    }
  }
  if (config.do_normalize) {
    for (double std : config.image_std) {
      if (std == 0) return KeyError("image_std", json.value("image_std", Json()), "non-zero values");
    }
  }
  if (config.do_center_crop && (!config.crop_size || !config.crop_size->height || !config.crop_size->width)) {
    return absl::InvalidArgumentError(
        "ParseImageProcessorConfig: do_center_crop is set but crop_size has no height and width");
  }
  if (config.do_resize && (config.resample == Resample::kLanczos || config.resample == Resample::kBox ||
                           config.resample == Resample::kHamming)) {
    return absl::UnimplementedError(absl::StrCat(
        "ParseImageProcessorConfig: resample ", static_cast<int>(config.resample),
        " (LANCZOS/BOX/HAMMING) is not implemented; expected 0 (NEAREST), 2 (BILINEAR) or 3 (BICUBIC)"));
  }
  return config;
}

absl::StatusOr<std::pair<int64_t, int64_t>> SmartResize(int64_t height, int64_t width, int64_t factor,
                                                         int64_t min_pixels, int64_t max_pixels) {
  const double aspect = static_cast<double>(std::max(height, width)) /
                        static_cast<double>(std::min(height, width));
  if (aspect > 200) {
    return absl::InvalidArgumentError(
        absl::StrCat("SmartResize: absolute aspect ratio must be smaller than 200, got ", aspect, " for ",
                     width, "x", height));
  }
  // Python's round() rounds half to even; nearbyint does the same in the default rounding mode.
  int64_t height_bar = static_cast<int64_t>(std::nearbyint(static_cast<double>(height) / static_cast<double>(factor))) * factor;
  int64_t width_bar = static_cast<int64_t>(std::nearbyint(static_cast<double>(width) / static_cast<double>(factor))) * factor;
  if (height_bar * width_bar > max_pixels) {
    const double beta = std::sqrt(static_cast<double>(height * width) / static_cast<double>(max_pixels));
    height_bar = std::max(factor, static_cast<int64_t>(std::floor(static_cast<double>(height) / beta / static_cast<double>(factor))) * factor);
    width_bar = std::max(factor, static_cast<int64_t>(std::floor(static_cast<double>(width) / beta / static_cast<double>(factor))) * factor);
  } else if (height_bar * width_bar < min_pixels) {
    const double beta = std::sqrt(static_cast<double>(min_pixels) / static_cast<double>(height * width));
    height_bar = static_cast<int64_t>(std::ceil(static_cast<double>(height) * beta / static_cast<double>(factor))) * factor;
    width_bar = static_cast<int64_t>(std::ceil(static_cast<double>(width) * beta / static_cast<double>(factor))) * factor;
  }
  return std::pair{height_bar, width_bar};
}

torch::Tensor ResizeLikeTorchvision(const torch::Tensor& images, int64_t height, int64_t width,
                                    Resample resample) {
  if (images.size(-2) == height && images.size(-1) == width) return images;
  const bool nearest = resample == Resample::kNearest;
  // torchvision keeps uint8 for nearest everywhere, for bicubic on CPU, and for bilinear on CPUs
  // with AVX2/AVX512 (ATen's vectorised uint8 kernels); otherwise it resizes in float32 and rounds.
  bool keep_uint8 = nearest;
  if (!keep_uint8 && images.device().is_cpu()) {
    if (resample == Resample::kBicubic) {
      keep_uint8 = true;
    } else {
      static const bool has_avx = [] {
        const std::string capability = at::get_cpu_capability();
        return capability == "AVX2" || capability == "AVX512";
      }();
      keep_uint8 = has_avx;
    }
  }
  const bool cast = images.scalar_type() == torch::kUInt8 ? !keep_uint8
                                                          : images.scalar_type() != torch::kFloat32 &&
                                                                images.scalar_type() != torch::kFloat64;
  torch::Tensor input = cast ? images.to(torch::kFloat32) : images;
  torch::Tensor output;
  const std::vector<int64_t> output_size = {height, width};
  switch (resample) {
    case Resample::kNearest:
      output = at::_upsample_nearest_exact2d(input, output_size, std::nullopt, std::nullopt);
      break;
    case Resample::kBilinear:
      output = at::_upsample_bilinear2d_aa(input, output_size, /*align_corners=*/false, std::nullopt, std::nullopt);
      break;
    default:
      output = at::_upsample_bicubic2d_aa(input, output_size, /*align_corners=*/false, std::nullopt, std::nullopt);
      break;
  }
  if (cast && images.scalar_type() == torch::kUInt8) {
    if (resample == Resample::kBicubic) output.clamp_(0, 255);
    output.round_();
    output = output.to(torch::kUInt8);
  }
  return output;
}

torch::Tensor ImageTensor(const DecodedImage& image) {
  TORCH_CHECK(image.picture_width == 0 || image.picture_width == image.width, "ImageTensor: the image holds columns ",
              image.first_column, "..", image.first_column + image.width, " of ", image.picture_width,
              " (decoded with needed_columns); decode the whole picture");
  // HWC bytes to a contiguous CHW tensor: transformers' process_image ends with .contiguous().
  torch::Tensor hwc = torch::from_blob(const_cast<uint8_t*>(image.pixels.data()),
                                       {image.height, image.width, 3}, torch::kUInt8);
  // clone, not contiguous(): a [3, 1, 1] permutation already counts as contiguous and would alias
  // the DecodedImage's buffer.
  return hwc.permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);
}

absl::StatusOr<ImageProcessor> ImageProcessor::FromJson(const Json& json) {
  absl::StatusOr<ImageProcessorConfig> config = ParseImageProcessorConfig(json);
  if (!config.ok()) return config.status();
  return ImageProcessor(*std::move(config));
}

absl::StatusOr<ImageProcessor> ImageProcessor::FromFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("ImageProcessor::FromFile: cannot open ", path));
  Json json = Json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat("ImageProcessor::FromFile(", path, "): invalid JSON"));
  }
  absl::StatusOr<ImageProcessor> processor = FromJson(json);
  if (!processor.ok()) {
    return absl::Status(processor.status().code(),
                        absl::StrCat(path, ": ", processor.status().message()));
  }
  return processor;
}

absl::StatusOr<ImageProcessor> ImageProcessor::FromDirectory(const std::string& directory) {
  const std::string image_config = directory + "/preprocessor_config.json";
  const std::string processor_config = directory + "/processor_config.json";
  std::error_code error;
  if (std::filesystem::exists(image_config, error) || !std::filesystem::exists(processor_config, error)) {
    absl::StatusOr<ImageProcessor> processor = FromFile(image_config);
    if (absl::IsNotFound(processor.status())) {
      return absl::NotFoundError(absl::StrCat(directory, " has no image processor: neither preprocessor_config.json ",
                                              "nor processor_config.json is there"));
    }
    return processor;
  }
  std::ifstream file(processor_config);
  Json json = Json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(processor_config, ": invalid JSON"));
  if (!json.is_object() || !json.contains("image_processor") || !json["image_processor"].is_object()) {
    return absl::NotFoundError(absl::StrCat(directory, " has no image processor: no preprocessor_config.json, and ",
                                            processor_config, " has no \"image_processor\" object"));
  }
  absl::StatusOr<ImageProcessor> processor = FromJson(json["image_processor"]);
  if (!processor.ok()) {
    return absl::Status(processor.status().code(),
                        absl::StrCat(processor_config, " image_processor: ", processor.status().message()));
  }
  return processor;
}

absl::StatusOr<ProcessedImages> ImageProcessor::Process(const std::vector<torch::Tensor>& images,
                                                        const torch::Device& device) const {
  const ImageProcessorConfig& config = config_;
  if (images.empty()) return absl::InvalidArgumentError("ImageProcessor::Process: no images");
  for (size_t index = 0; index < images.size(); ++index) {
    const torch::Tensor& image = images[index];
    if (image.dim() != 3 || image.size(0) != 3 || image.scalar_type() != torch::kUInt8) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ImageProcessor::Process: image ", index, ": expected a uint8 [3, H, W] tensor but got ",
          c10::toString(image.scalar_type()), " ", c10::str(image.sizes())));
    }
  }
  // Resize targets first, so a bad size fails before any work.
  std::vector<std::pair<int64_t, int64_t>> targets(images.size());
  for (size_t index = 0; index < images.size(); ++index) {
    targets[index] = {images[index].size(1), images[index].size(2)};
    if (config.do_resize) {
      absl::StatusOr<std::pair<int64_t, int64_t>> target =
          ResizeTarget(config, images[index].size(1), images[index].size(2));
      if (!target.ok()) {
        return absl::Status(target.status().code(),
                            absl::StrCat("image ", index, ": ", target.status().message()));
      }
      if (target->first <= 0 || target->second <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ImageProcessor::Process: image ", index, " (", images[index].size(2), "x",
            images[index].size(1), ") resizes to an empty ", target->second, "x", target->first));
      }
      targets[index] = *target;
    }
  }
  const NormalizeConstants constants = FuseConstants(config, device);

  // One group of same-shaped images: resize, center crop, rescale + normalize, (Qwen2-VL) patchify.
  auto process_group = [&](torch::Tensor batch, std::pair<int64_t, int64_t> target) {
    if (config.do_resize) batch = ResizeLikeTorchvision(batch, target.first, target.second, config.resample);
    if (config.do_center_crop) batch = CenterCrop(batch, *config.crop_size->height, *config.crop_size->width);
    if (constants.mean.defined()) {
      // normalize(images.to(float32), mean, std, inplace=images.dtype != float32)
      batch = batch.to(torch::kFloat32).sub_(constants.mean).div_(constants.std);
    } else if (constants.rescale_only) {
      batch = batch * config.rescale_factor;
    }
    if (config.family == ProcessorFamily::kQwen2Vl) {
      batch = Patchify(batch, config.patch_size, config.merge_size, config.temporal_patch_size);
    }
    return batch;
  };

  std::vector<torch::Tensor> outputs(images.size());
  if (device.is_cpu()) {
    // transformers disables grouping on CPU (group_images_by_shape with disable_grouping=None):
    // each picture is its own batch of one. Run them on parallel threads.
    std::vector<std::string> errors(images.size());
    ParallelForEachImage(images.size(), [&](size_t index) {
      try {
        outputs[index] = process_group(images[index].unsqueeze(0), targets[index]);
      } catch (const c10::Error& error) {
        errors[index] = error.what_without_backtrace();
      }
    });
    for (size_t index = 0; index < errors.size(); ++index) {
      if (!errors[index].empty()) {
        return absl::InternalError(absl::StrCat("ImageProcessor::Process: image ", index, ": ", errors[index]));
      }
    }
  } else {
    std::map<std::vector<int64_t>, std::vector<size_t>> groups;
    for (size_t index = 0; index < images.size(); ++index) {
      groups[images[index].sizes().vec()].push_back(index);
    }
    try {
      for (const auto& [shape, members] : groups) {
        std::vector<torch::Tensor> stacked;
        for (size_t index : members) stacked.push_back(images[index].to(device, /*non_blocking=*/true));
        torch::Tensor result = process_group(torch::stack(stacked), targets[members.front()]);
        for (size_t position = 0; position < members.size(); ++position) {
          outputs[members[position]] = result.narrow(0, static_cast<int64_t>(position), 1);
        }
      }
    } catch (const c10::Error& error) {
      return absl::InternalError(absl::StrCat("ImageProcessor::Process: ", error.what_without_backtrace()));
    }
  }

  ProcessedImages processed;
  if (config.family == ProcessorFamily::kQwen2Vl) {
    std::vector<int64_t> grids;
    std::vector<torch::Tensor> flat;
    for (size_t index = 0; index < outputs.size(); ++index) {
      grids.insert(grids.end(), {1, targets[index].first / config.patch_size,
                                 targets[index].second / config.patch_size});
      flat.push_back(outputs[index].squeeze(0));
    }
    processed.pixel_values = torch::cat(flat, 0).to(device);
    processed.image_grid_thw =
        torch::tensor(grids, torch::kInt64).view({static_cast<int64_t>(outputs.size()), 3});
    return processed;
  }
  if (config.do_pad) {
    int64_t pad_height = 0, pad_width = 0;
    if (config.pad_size && config.pad_size->height && config.pad_size->width) {
      pad_height = *config.pad_size->height;
      pad_width = *config.pad_size->width;
    } else {
      for (const torch::Tensor& output : outputs) {
        pad_height = std::max(pad_height, output.size(-2));
        pad_width = std::max(pad_width, output.size(-1));
      }
    }
    for (size_t index = 0; index < outputs.size(); ++index) {
      const int64_t extra_height = pad_height - outputs[index].size(-2);
      const int64_t extra_width = pad_width - outputs[index].size(-1);
      if (extra_height < 0 || extra_width < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ImageProcessor::Process: image ", index, " is larger than pad_size ", pad_width, "x", pad_height));
      }
      if (extra_height || extra_width) {
        outputs[index] = at::constant_pad_nd(outputs[index], {0, extra_width, 0, extra_height}, 0);
      }
    }
  }
  for (size_t index = 1; index < outputs.size(); ++index) {
    if (outputs[index].sizes() != outputs[0].sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ImageProcessor::Process: processed images differ in shape (", c10::str(outputs[0].sizes()),
          " vs ", c10::str(outputs[index].sizes()), " for image ", index,
          "); this configuration needs do_pad or one image per call"));
    }
  }
  processed.pixel_values = torch::cat(outputs, 0);
  return processed;
}

absl::StatusOr<ProcessedImages> ImageProcessor::ProcessEncoded(const std::vector<std::string>& encoded_images,
                                                               const torch::Device& device,
                                                               const DecodeOptions& options) const {
  const FastPlan plan = PlanFastPath(config_, device);
  if (plan.usable && !encoded_images.empty()) {
    // Rescale + normalize of every possible byte value, with the same ATen ops as the general path.
    const NormalizeConstants constants = FuseConstants(config_, device);
    torch::Tensor values = torch::arange(256, torch::kUInt8).view({1, 1, 1, 256}).expand({1, 3, 1, 256}).contiguous();
    torch::Tensor table = constants.mean.defined()
                              ? values.to(torch::kFloat32).sub_(constants.mean).div_(constants.std)
                              : values * config_.rescale_factor;
    table = table.to(torch::kFloat32).contiguous();
    const float* lut = table.data_ptr<float>();
    const auto count = static_cast<int64_t>(encoded_images.size());
    torch::Tensor pixel_values = torch::empty({count, 3, plan.out_height, plan.out_width}, torch::kFloat32);
    std::vector<absl::Status> statuses(encoded_images.size());
    ParallelForEachImage(encoded_images.size(), [&](size_t index) {
      thread_local FastScratch scratch;
      TrimAxisCache();
      // Decode only the columns the crop keeps (whole iMCUs of them): the IDCT, upsampling and
      // colour conversion of the rest would be thrown away.
      DecodeOptions windowed = options;
      windowed.needed_columns = [&](int64_t height, int64_t width) {
        return ColumnsTheFastPathReads(config_, plan, height, width);
      };
      absl::StatusOr<DecodedImage> decoded = DecodeImage(encoded_images[index], windowed);
      if (!decoded.ok()) {
        statuses[index] = decoded.status();
        return;
      }
      const int64_t picture_width = decoded->picture_width > 0 ? decoded->picture_width : decoded->width;
      absl::StatusOr<std::pair<int64_t, int64_t>> target = ResizeTarget(config_, decoded->height, picture_width);
      if (!target.ok()) {
        statuses[index] = target.status();
        return;
      }
      if (target->first <= 0 || target->second <= 0) {
        statuses[index] = absl::InvalidArgumentError(absl::StrCat(
            "ImageProcessor::Process: image (", picture_width, "x", decoded->height, ") resizes to an empty ",
            target->second, "x", target->first));
        return;
      }
      const int64_t top = CenterCropOffset(target->first, plan.out_height);
      const int64_t left = CenterCropOffset(target->second, plan.out_width);
      float* output = pixel_values.data_ptr<float>() + static_cast<int64_t>(index) * 3 * plan.out_height * plan.out_width;
      if (FastResizeCropNormalize(*decoded, *target, top, left, plan, lut, output, scratch)) return;
      absl::StatusOr<ProcessedImages> general = Process({ImageTensor(*decoded)}, device);
      if (!general.ok()) {
        statuses[index] = general.status();
        return;
      }
      pixel_values[static_cast<int64_t>(index)].copy_(general->pixel_values[0]);
    });
    for (size_t index = 0; index < statuses.size(); ++index) {
      if (!statuses[index].ok()) {
        return absl::Status(statuses[index].code(), absl::StrCat("image ", index, ": ", statuses[index].message()));
      }
    }
    ProcessedImages processed;
    processed.pixel_values = pixel_values;
    return processed;
  }
  absl::StatusOr<std::vector<DecodedImage>> decoded = DecodeImages(encoded_images, options);
  if (!decoded.ok()) return decoded.status();
  std::vector<torch::Tensor> images;
  images.reserve(decoded->size());
  for (DecodedImage& image : *decoded) {
    images.push_back(ImageTensor(image));
    image.pixels = {};  // the tensor holds a copy; one of the two is enough
  }
  return Process(images, device);
}

absl::StatusOr<std::vector<DecodedImage>> DecodeImages(const std::vector<std::string>& encoded_images,
                                                       const DecodeOptions& options) {
  std::vector<DecodedImage> images(encoded_images.size());
  std::vector<absl::Status> statuses(encoded_images.size());
  ParallelForEachImage(encoded_images.size(), [&](size_t index) {
    absl::StatusOr<DecodedImage> decoded = DecodeImage(encoded_images[index], options);
    if (decoded.ok()) {
      images[index] = *std::move(decoded);
    } else {
      statuses[index] = decoded.status();
    }
  });
  for (size_t index = 0; index < statuses.size(); ++index) {
    if (!statuses[index].ok()) {
      return absl::Status(statuses[index].code(), absl::StrCat("image ", index, ": ", statuses[index].message()));
    }
  }
  return images;
}

}  // namespace flotilla::image
