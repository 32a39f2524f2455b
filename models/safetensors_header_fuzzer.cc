// libFuzzer entry point: ParseSafetensorsHeader on arbitrary bytes must return a status, never
// crash, read out of bounds or accept offsets outside the data. Run by ctest
// (safetensors_header_fuzz) for 20 seconds from the seed corpus in fuzz_corpus/.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "models/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto header = flotilla::models::ParseSafetensorsHeader(bytes, "fuzz");
  if (header.ok()) {
    const uint64_t data_size = size - header->data_offset;
    uint64_t previous_end = 0;
    for (const auto& tensor : header->tensors) {
      if (tensor.begin < previous_end || tensor.end > data_size || tensor.begin > tensor.end) std::abort();
      previous_end = tensor.end;
    }
  }
  return 0;
}
