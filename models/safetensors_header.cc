#include "models/safetensors_header.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flotilla::models {
namespace {

constexpr std::pair<const char*, size_t> kDtypeSizes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
    {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1},
};

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

absl::StatusOr<size_t> SafetensorsDtypeSize(std::string_view dtype) {
  for (const auto& [name, size] : kDtypeSizes) {
    if (dtype == name) return size;
  }
  std::vector<std::string> known;
  for (const auto& [name, size] : kDtypeSizes) known.emplace_back(name);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", std::string(dtype), "\" (known: ", absl::StrJoin(known, ", "), ")"));
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file_bytes,
                                                        std::string_view file_name) {
  auto error = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("ParseSafetensorsHeader(", std::string(file_name), "): ", what));
  };
  if (file_bytes.size() < 8) {
    return error(absl::StrCat("file is ", file_bytes.size(), " bytes, expected at least the 8-byte header length"));
  }
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | static_cast<uint8_t>(file_bytes[i]);
  if (header_length > file_bytes.size() - 8) {
    return error(absl::StrCat("header length ", header_length, " runs past the end of the file (",
                              file_bytes.size() - 8, " bytes after the length prefix)"));
  }
  SafetensorsHeader header;
  header.data_offset = 8 + header_length;
  const uint64_t data_size = file_bytes.size() - header.data_offset;
  nlohmann::json json = nlohmann::json::parse(file_bytes.substr(8, header_length), nullptr,
                                               /*allow_exceptions=*/false);
  if (json.is_discarded()) return error("header is not valid JSON");
  if (!json.is_object()) return error(absl::StrCat("header must be a JSON object, got ", json.type_name()));

  for (const auto& [name, value] : json.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return error("__metadata__ must be an object of strings");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) return error(absl::StrCat("__metadata__.", key, " must be a string"));
        header.metadata[key] = text.get<std::string>();
      }
      continue;
    }
    const std::string& tensor_name = name;  // clang 14 cannot capture structured bindings
    auto tensor_error = [&](const std::string& what) { return error(absl::StrCat("tensor ", tensor_name, ": ", what)); };
    if (!value.is_object()) return tensor_error("entry must be an object");
    auto dtype = value.find("dtype");
    auto shape = value.find("shape");
    auto offsets = value.find("data_offsets");
    if (dtype == value.end() || !dtype->is_string()) return tensor_error("missing string field \"dtype\"");
    if (shape == value.end() || !shape->is_array()) return tensor_error("missing array field \"shape\"");
    if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2) {
      return tensor_error("missing field \"data_offsets\" of two integers");
    }
    SafetensorsTensorInfo info;
    info.name = name;
    info.dtype = dtype->get<std::string>();
    auto dtype_size = SafetensorsDtypeSize(info.dtype);
    if (!dtype_size.ok()) return tensor_error(std::string(dtype_size.status().message()));
    uint64_t element_count = 1;
    bool overflow = false;
    for (const auto& dimension : *shape) {
      if (!dimension.is_number_unsigned() && !(dimension.is_number_integer() && dimension.get<int64_t>() >= 0)) {
        return tensor_error("shape entries must be non-negative integers");
      }
      uint64_t size = dimension.get<uint64_t>();
      if (size > (uint64_t{1} << 48)) overflow = true;
      info.shape.push_back(static_cast<int64_t>(size));
      if (!overflow && size != 0 && element_count > (uint64_t{1} << 62) / size) overflow = true;
      if (!overflow) element_count *= size;
    }
    for (const auto& offset : *offsets) {
      if (!offset.is_number_unsigned() && !(offset.is_number_integer() && offset.get<int64_t>() >= 0)) {
        return tensor_error("data_offsets must be non-negative integers");
      }
    }
    info.begin = (*offsets)[0].get<uint64_t>();
    info.end = (*offsets)[1].get<uint64_t>();
    if (info.begin > info.end) {
      return tensor_error(absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] are reversed"));
    }
    if (info.end > data_size) {
      return tensor_error(absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] run past the data section of ",
                                       data_size, " bytes"));
    }
    const uint64_t element_size = *dtype_size;
    if (element_count > (uint64_t{1} << 56)) overflow = true;
    if (overflow || element_count * element_size != info.end - info.begin) {
      return tensor_error(absl::StrCat("shape ", ShapeString(info.shape), " of ", info.dtype, " needs ",
                                       overflow ? std::string("too many") : absl::StrCat(element_count * element_size),
                                       " bytes but data_offsets cover ", info.end - info.begin));
    }
    header.tensors.push_back(std::move(info));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const auto& a, const auto& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  uint64_t covered = 0;
  for (size_t i = 0; i < header.tensors.size(); ++i) {
    const auto& info = header.tensors[i];
    if (info.begin < covered) {
      return error(absl::StrCat("tensor ", info.name, ": data_offsets [", info.begin, ", ", info.end,
                                "] overlap tensor ", header.tensors[i - 1].name, " ending at ", covered));
    }
    covered = info.end;
  }
  return header;
}


}  // namespace flotilla::models
