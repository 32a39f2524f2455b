// ProcessImages' LibTorch half: load the image processor (preprocessor_config.json, else
// processor_config.json), decode and process the request's images, write pixel_values (and
// image_grid_thw) as flotilla.v1.Tensor. Kept apart so the rest of the service compiles without
// torch headers.

#include <absl/strings/str_cat.h>

#include "services/common/tensor_proto.h"
#include "services/preprocess/image/image_processor.h"
#include "services/preprocess/preprocess_service.h"

namespace flotilla::preprocess {

absl::StatusOr<std::shared_ptr<const image::ImageProcessor>> LoadImageProcessor(const std::string& directory) {
  auto processor = image::ImageProcessor::FromDirectory(directory);
  if (!processor.ok()) return processor.status();
  return std::make_shared<const image::ImageProcessor>(*std::move(processor));
}

absl::Status RunImageProcessor(const image::ImageProcessor& processor, const flotilla::v1::ProcessImagesRequest& request,
                               int64_t max_image_pixels, flotilla::v1::ProcessImagesResponse* response) {
  std::vector<std::string> encoded(request.images().begin(), request.images().end());
  image::DecodeOptions options;
  options.max_pixels = max_image_pixels;
  absl::StatusOr<image::ProcessedImages> processed;
  try {
    processed = processor.ProcessEncoded(encoded, torch::kCPU, options);
  } catch (const c10::Error& error) {
    return absl::InternalError(error.what_without_backtrace());
  }
  if (!processed.ok()) return processed.status();
  flotilla::v1::Tensor* pixel_values = response->add_tensors();
  if (absl::Status status = TensorToProto(processed->pixel_values, pixel_values); !status.ok()) return status;
  pixel_values->set_name("pixel_values");
  if (processed->image_grid_thw.defined()) {
    flotilla::v1::Tensor* grid = response->add_tensors();
    if (absl::Status status = TensorToProto(processed->image_grid_thw, grid); !status.ok()) return status;
    grid->set_name("image_grid_thw");
  }
  return absl::OkStatus();
}

}  // namespace flotilla::preprocess
