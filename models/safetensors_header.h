// The safetensors header parser, on its own (no LibTorch), so the libFuzzer target can build it
// with clang alone. models/safetensors.h is what callers use.
//
//   ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensorsHeader(file_bytes, "model.safetensors"));
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace flotilla::models {

// One entry of a header. `begin`/`end` are offsets into the data section (after the header).
struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;  // "F32", "BF16", ... as written in the file
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsTensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;  // the optional "__metadata__" object
  uint64_t data_offset = 0;                      // 8 + header length
};

// Parses and validates the header of a whole safetensors file held in `file_bytes`. `file_name`
// only labels errors. Never reads past file_bytes; this is the libFuzzer entry point.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view file_bytes,
                                                        std::string_view file_name);

// Bytes per element of a safetensors dtype ("F32" -> 4); unknown dtypes are an error listing the known ones.
absl::StatusOr<size_t> SafetensorsDtypeSize(std::string_view dtype);

}  // namespace flotilla::models
