#include "services/preprocess/image/decode.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <utility>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <webp/decode.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace flotilla::image {
namespace {

// A progressive JPEG may legally hold thousands of scans, each of which re-walks the whole
// coefficient buffer: a few KB of input can cost minutes. libjpeg-turbo's TurboJPEG API caps scans
// at 500 for the same reason; so do we.
constexpr int kMaxJpegScans = 500;

absl::Status CheckDimensions(std::string_view format, int64_t width, int64_t height,
                             const DecodeOptions& options) {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Decode", std::string(format), ": image has an empty size ", width, "x", height));
  }
  if (width * height > options.max_pixels) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "Decode", std::string(format), ": declared size ", width, "x", height, " = ", width * height,
        " pixels exceeds the limit of ", options.max_pixels, " pixels (decompression bomb?)"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// JPEG

struct JpegErrorManager {
  jpeg_error_mgr manager;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
  bool truncated = false;
};

void JpegErrorExit(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrorManager*>(info->err);
  (*info->err->format_message)(info, errors->message);
  std::longjmp(errors->jump, 1);
}

// libjpeg reports a truncated stream as a warning and pads the picture with grey; PIL (without
// LOAD_TRUNCATED_IMAGES) refuses such files, and a silently grey picture is worse than an error.
void JpegEmitMessage(j_common_ptr info, int level) {
  auto* errors = reinterpret_cast<JpegErrorManager*>(info->err);
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) errors->truncated = true;
  if (level < 0) info->err->num_warnings++;
}

void JpegProgress(j_common_ptr info) {
  auto* decompress = reinterpret_cast<j_decompress_ptr>(info);
  if (decompress->input_scan_number > kMaxJpegScans) {
    auto* errors = reinterpret_cast<JpegErrorManager*>(info->err);
    std::snprintf(errors->message, sizeof(errors->message),
                  "progressive JPEG has more than %d scans", kMaxJpegScans);
    std::longjmp(errors->jump, 1);
  }
}

std::string_view JpegExifBlock(jpeg_decompress_struct& info) {
  for (jpeg_saved_marker_ptr marker = info.marker_list; marker != nullptr; marker = marker->next) {
    if (marker->marker == JPEG_APP0 + 1 && marker->data_length >= 6 &&
        std::memcmp(marker->data, "Exif\0\0", 6) == 0) {
      return std::string_view(reinterpret_cast<const char*>(marker->data) + 6,
                              marker->data_length - 6);
    }
  }
  return {};
}

// Everything that setjmp's frame touches after the jump lives in `state`, declared by the caller
// before setjmp, so no C++ destructor is skipped by longjmp (only libjpeg's C frames are).
struct JpegState {
  jpeg_decompress_struct info;
  JpegErrorManager errors;
  jpeg_progress_mgr progress;
  absl::Status status;
  int orientation = 1;
};

// Returns false with state.errors.message set when libjpeg failed.
bool RunJpegDecode(std::string_view bytes, const DecodeOptions& options, JpegState& state,
                   DecodedImage& image) {
  jpeg_decompress_struct& info = state.info;
  info.err = jpeg_std_error(&state.errors.manager);
  state.errors.manager.error_exit = JpegErrorExit;
  state.errors.manager.emit_message = JpegEmitMessage;
  if (setjmp(state.errors.jump)) return false;
  jpeg_create_decompress(&info);
  state.progress.progress_monitor = JpegProgress;
  info.progress = &state.progress;
  jpeg_mem_src(&info, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_save_markers(&info, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&info, TRUE);
  state.status = CheckDimensions("Jpeg", info.image_width, info.image_height, options);
  if (!state.status.ok()) return true;
  switch (info.jpeg_color_space) {
    case JCS_GRAYSCALE:
    case JCS_YCbCr:
    case JCS_RGB:
      info.out_color_space = JCS_RGB;
      break;
    default:
      state.status = absl::UnimplementedError(absl::StrCat(
          "DecodeJpeg: color space ", static_cast<int>(info.jpeg_color_space),
          " (CMYK/YCCK) is not supported; expected grayscale, YCbCr or RGB"));
      return true;
  }
  if (options.apply_exif_orientation) {
    std::string_view exif = JpegExifBlock(info);
    if (!exif.empty()) state.orientation = ExifOrientation(exif);
  }
  jpeg_start_decompress(&info);
  if (info.output_components != 3) {
    state.status = absl::InternalError(absl::StrCat(
        "DecodeJpeg: expected 3 output components but got ", info.output_components));
    return true;
  }
  const int64_t picture_width = info.output_width;
  if (options.needed_columns && state.orientation == 1) {
    auto [first, last] = options.needed_columns(info.output_height, picture_width);
    // At the edges of a cropped window fancy upsampling has no neighbour to blend with, so the
    // window reaches a margin past the columns asked for; libjpeg widens it to whole iMCUs.
    constexpr int64_t kMargin = 16;
    first = std::max<int64_t>(0, first - kMargin);
    last = std::min<int64_t>(picture_width, last + kMargin);
    if (first < last && (first > 0 || last < picture_width)) {
      auto window_first = static_cast<JDIMENSION>(first);
      auto window_width = static_cast<JDIMENSION>(last - first);
      jpeg_crop_scanline(&info, &window_first, &window_width);
      image.first_column = window_first;
      image.picture_width = picture_width;
    }
  }
  image.height = info.output_height;
  image.width = info.output_width;
  image.pixels.resize(static_cast<size_t>(image.height * image.width * 3));
  const size_t row_bytes = static_cast<size_t>(image.width) * 3;
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = image.pixels.data() + info.output_scanline * row_bytes;
    jpeg_read_scanlines(&info, &row, 1);
    if (state.errors.truncated) break;
  }
  if (state.errors.truncated) {
    state.status = absl::InvalidArgumentError(absl::StrCat(
        "DecodeJpeg: data is truncated (", bytes.size(), " bytes end at scanline ",
        info.output_scanline, " of ", info.output_height, ")"));
    return true;
  }
  jpeg_finish_decompress(&info);
  if (state.errors.truncated) {
    state.status = absl::InvalidArgumentError(
        absl::StrCat("DecodeJpeg: data is truncated (", bytes.size(), " bytes, no end marker)"));
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// PNG

struct PngReader {
  std::string_view bytes;
  size_t offset = 0;
  char message[256] = {};
};

void PngRead(png_structp png, png_bytep destination, png_size_t length) {
  auto* reader = static_cast<PngReader*>(png_get_io_ptr(png));
  if (reader->bytes.size() - reader->offset < length) {
    std::snprintf(reader->message, sizeof(reader->message),
                  "data is truncated (%zu bytes, needed %zu more at offset %zu)",
                  reader->bytes.size(), length - (reader->bytes.size() - reader->offset),
                  reader->offset);
    png_longjmp(png, 1);
  }
  std::memcpy(destination, reader->bytes.data() + reader->offset, length);
  reader->offset += length;
}

void PngError(png_structp png, png_const_charp message) {
  auto* reader = static_cast<PngReader*>(png_get_io_ptr(png));
  if (reader != nullptr && reader->message[0] == '\0') {
    std::snprintf(reader->message, sizeof(reader->message), "%s", message);
  }
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}

struct PngState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  PngReader reader;
  absl::Status status;
  int orientation = 1;
  std::vector<png_bytep> rows;
};

bool RunPngDecode(const DecodeOptions& options, PngState& state, DecodedImage& image) {
  png_structp png = state.png;
  png_infop info = state.info;
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, &state.reader, PngRead);
  // libpng's own limits: ancillary chunks (text, ICC, EXIF) may not allocate more than 8 MiB.
  png_set_chunk_malloc_max(png, 8 << 20);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0, interlace = 0;
  png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, &interlace, nullptr, nullptr);
  state.status = CheckDimensions("Png", width, height, options);
  if (!state.status.ok()) return true;
  // torchvision's RGB mode: expand palettes and low bit depths, keep the high byte of 16-bit
  // samples, replicate gray, drop alpha (the palette's tRNS entry is never turned into alpha).
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (bit_depth == 16) png_set_strip_16(png);
  // png_set_palette_to_rgb also turns a tRNS chunk into alpha; strip that too.
  if ((color_type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) {
    png_set_strip_alpha(png);
  }
  if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA) {
    png_set_gray_to_rgb(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8) {
    state.status = absl::InternalError(absl::StrCat(
        "DecodePng: expected 3 channels of 8 bits after conversion but got ",
        static_cast<int>(png_get_channels(png, info)), " of ",
        static_cast<int>(png_get_bit_depth(png, info))));
    return true;
  }
  image.height = height;
  image.width = width;
  image.pixels.resize(static_cast<size_t>(image.height * image.width * 3));
  state.rows.resize(height);
  for (png_uint_32 row = 0; row < height; ++row) {
    state.rows[row] = image.pixels.data() + static_cast<size_t>(row) * width * 3;
  }
  png_read_image(png, state.rows.data());
  png_read_end(png, info);
  if (options.apply_exif_orientation) {
    png_uint_32 exif_length = 0;
    png_bytep exif = nullptr;
    if (png_get_eXIf_1(png, info, &exif_length, &exif) != 0 && exif != nullptr) {
      state.orientation =
          ExifOrientation(std::string_view(reinterpret_cast<const char*>(exif), exif_length));
    }
  }
  return true;
}

uint32_t ReadUnsigned(const unsigned char* data, int bytes, bool little_endian) {
  uint32_t value = 0;
  for (int i = 0; i < bytes; ++i) {
    const int index = little_endian ? bytes - 1 - i : i;
    value = (value << 8) | data[index];
  }
  return value;
}

}  // namespace

ImageFormat DetectImageFormat(std::string_view bytes) {
  auto starts_with = [&](std::string_view prefix, size_t offset = 0) {
    return bytes.size() >= offset + prefix.size() && bytes.substr(offset, prefix.size()) == prefix;
  };
  if (starts_with("\xFF\xD8\xFF")) return ImageFormat::kJpeg;
  if (starts_with("\x89PNG\r\n\x1A\n")) return ImageFormat::kPng;
  if (starts_with("RIFF") && starts_with("WEBP", 8)) return ImageFormat::kWebp;
  if (starts_with("GIF87a") || starts_with("GIF89a")) return ImageFormat::kGif;
  if (starts_with("BM")) return ImageFormat::kBmp;
  if (starts_with(std::string_view("II*\0", 4)) || starts_with(std::string_view("MM\0*", 4))) {
    return ImageFormat::kTiff;
  }
  if (starts_with("ftypavif", 4) || starts_with("ftypavis", 4)) return ImageFormat::kAvif;
  if (starts_with("ftypheic", 4) || starts_with("ftypheix", 4) || starts_with("ftypmif1", 4)) {
    return ImageFormat::kHeic;
  }
  return ImageFormat::kUnknown;
}

std::string_view ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kWebp: return "WebP";
    case ImageFormat::kGif: return "GIF";
    case ImageFormat::kBmp: return "BMP";
    case ImageFormat::kTiff: return "TIFF";
    case ImageFormat::kAvif: return "AVIF";
    case ImageFormat::kHeic: return "HEIC";
    case ImageFormat::kUnknown: break;
  }
  return "unknown";
}

absl::StatusOr<DecodedImage> DecodeImage(std::string_view bytes, const DecodeOptions& options) {
  const ImageFormat format = DetectImageFormat(bytes);
  switch (format) {
    case ImageFormat::kJpeg: return DecodeJpeg(bytes, options);
    case ImageFormat::kPng: return DecodePng(bytes, options);
    case ImageFormat::kWebp: return DecodeWebp(bytes, options);
    case ImageFormat::kUnknown: {
      std::string head;
      for (size_t i = 0; i < bytes.size() && i < 8; ++i) {
        absl::StrAppend(&head, i ? " " : "", absl::Hex(static_cast<unsigned char>(bytes[i]),
                                                       absl::kZeroPad2));
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "DecodeImage: unrecognised image data (", bytes.size(), " bytes, starting [", head,
          "]); expected JPEG, PNG or WebP"));
    }
    default:
      return absl::UnimplementedError(absl::StrCat("DecodeImage: ", std::string(ImageFormatName(format)),
                                                   " is not supported; expected JPEG, PNG or WebP"));
  }
}

absl::StatusOr<DecodedImage> DecodeJpeg(std::string_view bytes, const DecodeOptions& options) {
  JpegState state;
  DecodedImage image;
  const bool library_ok = RunJpegDecode(bytes, options, state, image);
  jpeg_destroy_decompress(&state.info);
  if (!library_ok) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeJpeg: ", state.errors.message));
  }
  if (!state.status.ok()) return state.status;
  ApplyExifOrientation(state.orientation, image);
  return image;
}

absl::StatusOr<DecodedImage> DecodePng(std::string_view bytes, const DecodeOptions& options) {
  if (bytes.size() < 8 || png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) != 0) {
    return absl::InvalidArgumentError("DecodePng: data does not start with the PNG signature");
  }
  PngState state;
  state.reader.bytes = bytes;
  state.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, PngError, PngWarning);
  if (state.png == nullptr) return absl::ResourceExhaustedError("DecodePng: out of memory");
  state.info = png_create_info_struct(state.png);
  if (state.info == nullptr) {
    png_destroy_read_struct(&state.png, nullptr, nullptr);
    return absl::ResourceExhaustedError("DecodePng: out of memory");
  }
  DecodedImage image;
  const bool library_ok = RunPngDecode(options, state, image);
  png_destroy_read_struct(&state.png, &state.info, nullptr);
  if (!library_ok) {
    return absl::InvalidArgumentError(absl::StrCat("DecodePng: ", state.reader.message));
  }
  if (!state.status.ok()) return state.status;
  ApplyExifOrientation(state.orientation, image);
  return image;
}

absl::StatusOr<DecodedImage> DecodeWebp(std::string_view bytes, const DecodeOptions& options) {
  WebPBitstreamFeatures features;
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  const VP8StatusCode code = WebPGetFeatures(data, bytes.size(), &features);
  if (code == VP8_STATUS_NOT_ENOUGH_DATA) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeWebp: data is truncated (", bytes.size(), " bytes, header incomplete)"));
  }
  if (code != VP8_STATUS_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("DecodeWebp: invalid WebP header (libwebp status ", static_cast<int>(code), ")"));
  }
  if (features.has_animation) {
    return absl::UnimplementedError("DecodeWebp: animated WebP is not supported; expected a still image");
  }
  if (absl::Status status = CheckDimensions("Webp", features.width, features.height, options);
      !status.ok()) {
    return status;
  }
  DecodedImage image;
  image.height = features.height;
  image.width = features.width;
  image.pixels.resize(static_cast<size_t>(image.height * image.width * 3));
  if (WebPDecodeRGBInto(data, bytes.size(), image.pixels.data(), image.pixels.size(),
                        static_cast<int>(image.width * 3)) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DecodeWebp: corrupt or truncated bitstream (", bytes.size(), " bytes, ", image.width, "x",
        image.height, " declared)"));
  }
  return image;
}

int ExifOrientation(std::string_view tiff) {
  const auto* data = reinterpret_cast<const unsigned char*>(tiff.data());
  const size_t size = tiff.size();
  if (size < 8) return 1;
  bool little_endian;
  if (data[0] == 'I' && data[1] == 'I') {
    little_endian = true;
  } else if (data[0] == 'M' && data[1] == 'M') {
    little_endian = false;
  } else {
    return 1;
  }
  if (ReadUnsigned(data + 2, 2, little_endian) != 42) return 1;
  const uint32_t directory = ReadUnsigned(data + 4, 4, little_endian);
  if (directory > size - 2) return 1;
  const uint32_t entries = ReadUnsigned(data + directory, 2, little_endian);
  for (uint32_t entry = 0; entry < entries; ++entry) {
    const size_t offset = directory + 2 + static_cast<size_t>(entry) * 12;
    if (offset + 12 > size) return 1;
    if (ReadUnsigned(data + offset, 2, little_endian) != 0x0112) continue;
    const uint32_t type = ReadUnsigned(data + offset + 2, 2, little_endian);
    if (type != 3) return 1;  // SHORT
    const uint32_t value = ReadUnsigned(data + offset + 8, 2, little_endian);
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

void ApplyExifOrientation(int orientation, DecodedImage& image) {
  if (orientation <= 1 || orientation > 8) return;
  const int64_t height = image.height, width = image.width;
  const bool swap = orientation >= 5;
  const int64_t out_height = swap ? width : height, out_width = swap ? height : width;
  std::vector<uint8_t> upright(image.pixels.size());
  for (int64_t y = 0; y < out_height; ++y) {
    for (int64_t x = 0; x < out_width; ++x) {
      int64_t source_y = 0, source_x = 0;
      switch (orientation) {
        case 2: source_y = y; source_x = width - 1 - x; break;
        case 3: source_y = height - 1 - y; source_x = width - 1 - x; break;
        case 4: source_y = height - 1 - y; source_x = x; break;
        case 5: source_y = x; source_x = y; break;
        case 6: source_y = height - 1 - x; source_x = y; break;
        case 7: source_y = height - 1 - x; source_x = width - 1 - y; break;
        case 8: source_y = x; source_x = width - 1 - y; break;
      }
      const uint8_t* source = &image.pixels[(source_y * width + source_x) * 3];
      uint8_t* target = &upright[(y * out_width + x) * 3];
      target[0] = source[0];
      target[1] = source[1];
      target[2] = source[2];
    }
  }
  image.pixels = std::move(upright);
  image.height = out_height;
  image.width = out_width;
}

}  // namespace flotilla::image
