// libFuzzer target for the image decoders: random bytes must yield an image or a status, never a
// crash, a sanitizer report, a leak, or an allocation beyond the pixel limit. FLOTILLA_FUZZ_FORMAT
// (jpeg, png, webp; default any) picks the decoder, so each one gets its own time budget.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "services/preprocess/image/decode.h"

namespace {

enum class Target { kAny, kJpeg, kPng, kWebp };

Target ChosenTarget() {
  const char* format = std::getenv("FLOTILLA_FUZZ_FORMAT");
  const std::string_view name = format == nullptr ? "any" : format;
  if (name == "jpeg") return Target::kJpeg;
  if (name == "png") return Target::kPng;
  if (name == "webp") return Target::kWebp;
  return Target::kAny;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Target target = ChosenTarget();
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  flotilla::image::DecodeOptions options;
  options.max_pixels = 4'000'000;  // keeps each iteration within libFuzzer's malloc limit
  switch (target) {
    case Target::kJpeg: (void)flotilla::image::DecodeJpeg(bytes, options); break;
    case Target::kPng: (void)flotilla::image::DecodePng(bytes, options); break;
    case Target::kWebp: (void)flotilla::image::DecodeWebp(bytes, options); break;
    case Target::kAny: (void)flotilla::image::DecodeImage(bytes, options); break;
  }
  return 0;
}
