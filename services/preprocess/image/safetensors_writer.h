// A minimal safetensors writer for the image processor's outputs (`flotilla process-image`):
// named CPU tensors to one file in the format of huggingface/safetensors (8-byte little-endian
// header length, JSON header with dtype/shape/data_offsets, then the raw little-endian data).
//
//   absl::Status status = WriteSafetensors("pixel_values.safetensors",
//                                          {{"pixel_values", pixel_values}});
//
// Private to the preprocess image library until the models library's writer is shared.
// Thread-safety: reentrant.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"

namespace flotilla::image {

// Tensors are moved to CPU and made contiguous; dtypes F32, F64, F16, BF16, I64, I32, U8.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

}  // namespace flotilla::image
