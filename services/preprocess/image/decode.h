// Image decoding for the preprocess service: JPEG (libjpeg-turbo), PNG (libpng) and WebP (libwebp)
// bytes to an upright 8-bit RGB picture, the way transformers' fast image processors load a file
// (torchvision.io.decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=True)):
//
//   absl::StatusOr<DecodedImage> image = DecodeImage(file_bytes);
//   if (!image.ok()) return image.status();    // names the format, the problem, expected vs actual
//   // image->pixels holds height * width * 3 bytes, row-major, RGB interleaved.
//
// What "RGB" means here, as torchvision's RGB mode does: grayscale is replicated to three channels,
// palettes are expanded, alpha (and a palette's transparent entry) is dropped, not composited.
// EXIF orientation (JPEG APP1, PNG eXIf) is applied. 16-bit PNG samples keep their high byte.
//
// Bad input never crashes and never allocates more than the declared picture: the declared size is
// checked against DecodeOptions::max_pixels before any pixel buffer exists (decompression bombs),
// truncated data is an error (not a grey tail), progressive JPEGs with absurd scan counts are
// refused. This file links no LibTorch, so the libFuzzer targets in fuzz/ build it with clang alone.
//
// Thread-safety: every function here is reentrant; decode different images on different threads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace flotilla::image {

enum class ImageFormat { kUnknown, kJpeg, kPng, kWebp, kGif, kBmp, kTiff, kAvif, kHeic };

// The format named by the first bytes (magic numbers); kUnknown when none matches.
ImageFormat DetectImageFormat(std::string_view bytes);
std::string_view ImageFormatName(ImageFormat format);

struct DecodeOptions {
  // Largest height * width accepted, checked against the header before allocating. Pillow's
  // Image.MAX_IMAGE_PIXELS (89,478,485, about 0.25 GiB of RGB) is the familiar default.
  int64_t max_pixels = 89'478'485;
  // Apply the EXIF orientation tag, as transformers' loaders do.
  bool apply_exif_orientation = true;
  // For a caller that reads only some columns (a center crop): given the picture's height and
  // width, the columns [first, last) it will read. A JPEG stored upright then skips the IDCT,
  // upsampling and colour conversion of the iMCU columns well outside them (libjpeg-turbo's
  // jpeg_crop_scanline). The columns asked for are bit-identical to a whole decode; the window's
  // outermost columns, beyond a margin around them, may not be.
  std::function<std::pair<int64_t, int64_t>(int64_t height, int64_t width)> needed_columns;
};

struct DecodedImage {
  int64_t height = 0;
  int64_t width = 0;            // columns held in `pixels`
  std::vector<uint8_t> pixels;  // height * width * 3, RGB, row-major
  // Set when needed_columns made a JPEG decode part of each row: the columns held are
  // [first_column, first_column + width) of a picture `picture_width` wide. 0: the whole width.
  int64_t first_column = 0;
  int64_t picture_width = 0;
};

// Detects the format and decodes. Errors: InvalidArgument for corrupt, truncated or unrecognised
// data; Unimplemented for a recognised format this decoder does not read (GIF, BMP, TIFF, AVIF,
// HEIC, animated WebP, CMYK JPEG); ResourceExhausted for a picture above max_pixels.
absl::StatusOr<DecodedImage> DecodeImage(std::string_view bytes, const DecodeOptions& options = {});

// The per-format decoders DecodeImage dispatches to (also the libFuzzer entry points).
absl::StatusOr<DecodedImage> DecodeJpeg(std::string_view bytes, const DecodeOptions& options = {});
absl::StatusOr<DecodedImage> DecodePng(std::string_view bytes, const DecodeOptions& options = {});
absl::StatusOr<DecodedImage> DecodeWebp(std::string_view bytes, const DecodeOptions& options = {});

// The orientation (1..8) stored in an EXIF TIFF block (the bytes after "Exif\0\0"); 1 when the
// block is malformed or carries no orientation tag, as torchvision does.
int ExifOrientation(std::string_view tiff);

// Turns a picture stored with EXIF `orientation` into the upright one (swaps height and width
// for orientations 5..8).
void ApplyExifOrientation(int orientation, DecodedImage& image);

}  // namespace flotilla::image
