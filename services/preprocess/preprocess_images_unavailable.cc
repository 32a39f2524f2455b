// ProcessImages in builds without LibTorch (FLOTILLA_WITH_TORCH off): the image processors are
// LibTorch ops, so the RPC says it is not built in.
#include "services/preprocess/preprocess_service.h"

namespace flotilla::preprocess {

absl::StatusOr<std::shared_ptr<const image::ImageProcessor>> LoadImageProcessor(const std::string&) {
  return absl::UnimplementedError("image processors need LibTorch, and this flotilla-preprocess was built without it");
}

absl::Status RunImageProcessor(const image::ImageProcessor&, const flotilla::v1::ProcessImagesRequest&, int64_t,
                               flotilla::v1::ProcessImagesResponse*) {
  return absl::UnimplementedError("image processors need LibTorch, and this flotilla-preprocess was built without it");
}

}  // namespace flotilla::preprocess
