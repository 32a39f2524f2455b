// Converts between flotilla.v1.Tensor (dtype, shape, raw little-endian bytes) and at::Tensor.
// Linked only by targets that already use LibTorch.
//
//   absl::StatusOr<at::Tensor> input_ids = flotilla::TensorFromProto(request.input_ids());
//   flotilla::TensorToProto(logits, response->mutable_logits());
#pragma once

#include <ATen/Tensor.h>
#include <absl/status/statusor.h>

#include "flotilla/v1/common.pb.h"

namespace flotilla {

// Copies the bytes into a new CPU tensor. Fails with INVALID_ARGUMENT when the byte count does not
// match the shape and dtype, or the dtype is unspecified.
absl::StatusOr<at::Tensor> TensorFromProto(const flotilla::v1::Tensor& proto);

// Writes a contiguous CPU copy of `tensor` into `proto`.
absl::Status TensorToProto(const at::Tensor& tensor, flotilla::v1::Tensor* proto);

absl::StatusOr<at::ScalarType> ScalarTypeFromProto(flotilla::v1::DataType dtype);
absl::StatusOr<flotilla::v1::DataType> ScalarTypeToProto(at::ScalarType scalar_type);

}  // namespace flotilla
