#include "services/preprocess/image/safetensors_writer.h"

#include <cstdint>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace flotilla::image {
namespace {

const char* DtypeName(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return "F32";
    case torch::kFloat64: return "F64";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kUInt8: return "U8";
    default: return nullptr;
  }
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  // nlohmann's ordered_json keeps insertion order, so the header lists tensors as given.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::vector<torch::Tensor> contiguous;
  int64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const char* dtype = DtypeName(tensor.scalar_type());
    if (dtype == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("WriteSafetensors(", path, "): tensor ", name,
                                                     ": unsupported dtype ", c10::toString(tensor.scalar_type())));
    }
    torch::Tensor data = tensor.to(torch::kCPU).contiguous();
    const int64_t bytes = static_cast<int64_t>(data.nbytes());
    header[name] = {{"dtype", dtype}, {"shape", data.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(data));
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // align the data to 8 bytes
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) return absl::PermissionDeniedError(absl::StrCat("WriteSafetensors: cannot create ", path));
  const uint64_t header_length = header_text.size();
  unsigned char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(header_length >> (8 * i));
  file.write(reinterpret_cast<const char*>(length_bytes), 8);
  file.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (const torch::Tensor& data : contiguous) {
    file.write(static_cast<const char*>(data.data_ptr()), static_cast<std::streamsize>(data.nbytes()));
  }
  file.close();
  if (!file) return absl::DataLossError(absl::StrCat("WriteSafetensors: writing ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace flotilla::image
