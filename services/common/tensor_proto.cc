#include "services/common/tensor_proto.h"

#include <cstring>

#include <ATen/ATen.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

namespace flotilla {

absl::StatusOr<at::ScalarType> ScalarTypeFromProto(flotilla::v1::DataType dtype) {
  using flotilla::v1::DataType;
  switch (dtype) {
    case flotilla::v1::DATA_TYPE_FLOAT32: return at::kFloat;
    case flotilla::v1::DATA_TYPE_FLOAT16: return at::kHalf;
    case flotilla::v1::DATA_TYPE_BFLOAT16: return at::kBFloat16;
    case flotilla::v1::DATA_TYPE_FLOAT64: return at::kDouble;
    case flotilla::v1::DATA_TYPE_INT64: return at::kLong;
    case flotilla::v1::DATA_TYPE_INT32: return at::kInt;
    case flotilla::v1::DATA_TYPE_INT16: return at::kShort;
    case flotilla::v1::DATA_TYPE_INT8: return at::kChar;
    case flotilla::v1::DATA_TYPE_UINT8: return at::kByte;
    case flotilla::v1::DATA_TYPE_BOOL: return at::kBool;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor dtype ", flotilla::v1::DataType_Name(dtype), " is not supported"));
  }
}

absl::StatusOr<flotilla::v1::DataType> ScalarTypeToProto(at::ScalarType scalar_type) {
  switch (scalar_type) {
    case at::kFloat: return flotilla::v1::DATA_TYPE_FLOAT32;
    case at::kHalf: return flotilla::v1::DATA_TYPE_FLOAT16;
    case at::kBFloat16: return flotilla::v1::DATA_TYPE_BFLOAT16;
    case at::kDouble: return flotilla::v1::DATA_TYPE_FLOAT64;
    case at::kLong: return flotilla::v1::DATA_TYPE_INT64;
    case at::kInt: return flotilla::v1::DATA_TYPE_INT32;
    case at::kShort: return flotilla::v1::DATA_TYPE_INT16;
    case at::kChar: return flotilla::v1::DATA_TYPE_INT8;
    case at::kByte: return flotilla::v1::DATA_TYPE_UINT8;
    case at::kBool: return flotilla::v1::DATA_TYPE_BOOL;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor dtype ", c10::toString(scalar_type), " has no flotilla.v1.DataType"));
  }
}

absl::StatusOr<at::Tensor> TensorFromProto(const flotilla::v1::Tensor& proto) {
  absl::StatusOr<at::ScalarType> scalar_type = ScalarTypeFromProto(proto.dtype());
  if (!scalar_type.ok()) return scalar_type.status();
  std::vector<int64_t> shape(proto.shape().begin(), proto.shape().end());
  int64_t elements = 1;
  for (int64_t size : shape) {
    if (size < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", proto.name(), "': negative size in shape [", absl::StrJoin(shape, ", "), "]"));
    }
    // Overflow guard: no real tensor has more than 2^48 elements.
    if (size != 0 && elements > (int64_t{1} << 48) / size) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", proto.name(), "': shape too large"));
    }
    elements *= size;
  }
  const int64_t expected_bytes = elements * static_cast<int64_t>(c10::elementSize(*scalar_type));
  if (static_cast<int64_t>(proto.data().size()) != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", proto.name(), "': shape [", absl::StrJoin(shape, ", "), "] of ",
        c10::toString(*scalar_type), " needs ", expected_bytes, " bytes but data has ",
        proto.data().size()));
  }
  at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(*scalar_type));
  if (expected_bytes > 0) std::memcpy(tensor.data_ptr(), proto.data().data(), expected_bytes);
  return tensor;
}

absl::Status TensorToProto(const at::Tensor& tensor, flotilla::v1::Tensor* proto) {
  absl::StatusOr<flotilla::v1::DataType> dtype = ScalarTypeToProto(tensor.scalar_type());
  if (!dtype.ok()) return dtype.status();
  const at::Tensor contiguous = tensor.to(at::kCPU).contiguous();
  proto->set_dtype(*dtype);
  proto->clear_shape();
  for (int64_t size : contiguous.sizes()) proto->add_shape(size);
  proto->set_data(static_cast<const char*>(contiguous.data_ptr()), contiguous.nbytes());
  return absl::OkStatus();
}

}  // namespace flotilla
