#include "services/preprocess/image/decode.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <jpeglib.h>
#include <png.h>
#include <webp/encode.h>

namespace flotilla::image {
namespace {

std::vector<uint8_t> Gradient(int width, int height) {
  std::vector<uint8_t> pixels(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* pixel = &pixels[(static_cast<size_t>(y) * width + x) * 3];
      pixel[0] = static_cast<uint8_t>(x * 255 / std::max(width - 1, 1));
      pixel[1] = static_cast<uint8_t>(y * 255 / std::max(height - 1, 1));
      pixel[2] = static_cast<uint8_t>((x + y) % 256);
    }
  }
  return pixels;
}

std::string EncodeJpeg(int width, int height, int quality = 95) {
  std::vector<uint8_t> pixels = Gradient(width, height);
  jpeg_compress_struct info;
  jpeg_error_mgr errors;
  info.err = jpeg_std_error(&errors);
  jpeg_create_compress(&info);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&info, &buffer, &size);
  info.image_width = width;
  info.image_height = height;
  info.input_components = 3;
  info.in_color_space = JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, quality, TRUE);
  jpeg_start_compress(&info, TRUE);
  while (info.next_scanline < info.image_height) {
    JSAMPROW row = &pixels[static_cast<size_t>(info.next_scanline) * width * 3];
    jpeg_write_scanlines(&info, &row, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  std::string bytes(reinterpret_cast<char*>(buffer), size);
  std::free(buffer);
  return bytes;
}

void PngWrite(png_structp png, png_bytep data, png_size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<char*>(data), length);
}
void PngFlush(png_structp) {}

std::string EncodePng(int width, int height, int color_type, const std::vector<uint8_t>& pixels,
                      int bit_depth = 8) {
  std::string bytes;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &bytes, PngWrite, PngFlush);
  png_set_IHDR(png, info, width, height, bit_depth, color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  for (int y = 0; y < height; ++y) png_write_row(png, pixels.data() + y * row_bytes);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return bytes;
}

TEST(DecodeImageTest, DecodesJpegToRgb) {
  absl::StatusOr<DecodedImage> image = DecodeImage(EncodeJpeg(37, 21));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 37);
  EXPECT_EQ(image->height, 21);
  EXPECT_EQ(image->pixels.size(), 37u * 21u * 3u);
  // Quality 95: close to the source gradient.
  std::vector<uint8_t> source = Gradient(37, 21);
  int max_difference = 0;
  for (size_t i = 0; i < source.size(); ++i) {
    max_difference = std::max(max_difference, std::abs(source[i] - image->pixels[i]));
  }
  EXPECT_LT(max_difference, 40);
}

TEST(DecodeImageTest, PngDropsAlphaAndExpandsGray) {
  std::vector<uint8_t> rgba = {10, 20, 30, 0, 40, 50, 60, 128};
  absl::StatusOr<DecodedImage> image = DecodeImage(EncodePng(2, 1, PNG_COLOR_TYPE_RGBA, rgba));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{10, 20, 30, 40, 50, 60}));

  std::vector<uint8_t> gray = {7, 200};
  image = DecodeImage(EncodePng(2, 1, PNG_COLOR_TYPE_GRAY, gray));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{7, 7, 7, 200, 200, 200}));

  // 16-bit samples keep their high byte.
  std::vector<uint8_t> sixteen = {0x12, 0x34, 0xAB, 0xCD, 0xFF, 0x01};
  image = DecodeImage(EncodePng(1, 1, PNG_COLOR_TYPE_RGB, sixteen, 16));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{0x12, 0xAB, 0xFF}));
}

TEST(DecodeImageTest, DecodesWebpLossless) {
  std::vector<uint8_t> pixels = Gradient(9, 5);
  uint8_t* output = nullptr;
  const size_t size = WebPEncodeLosslessRGB(pixels.data(), 9, 5, 27, &output);
  ASSERT_GT(size, 0u);
  std::string bytes(reinterpret_cast<char*>(output), size);
  WebPFree(output);
  absl::StatusOr<DecodedImage> image = DecodeImage(bytes);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->pixels, pixels);
}

TEST(DecodeImageTest, TruncatedDataIsAnError) {
  std::string jpeg = EncodeJpeg(64, 64);
  absl::StatusOr<DecodedImage> image = DecodeImage(jpeg.substr(0, jpeg.size() / 2));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(image.status().message().find("truncated"), std::string::npos) << image.status();

  std::vector<uint8_t> pixels = Gradient(64, 64);
  std::string png = EncodePng(64, 64, PNG_COLOR_TYPE_RGB, pixels);
  image = DecodeImage(png.substr(0, png.size() / 2));
  ASSERT_FALSE(image.ok());
  EXPECT_NE(image.status().message().find("truncated"), std::string::npos) << image.status();

  uint8_t* output = nullptr;
  const size_t size = WebPEncodeRGB(pixels.data(), 64, 64, 192, 80, &output);
  std::string webp(reinterpret_cast<char*>(output), size);
  WebPFree(output);
  image = DecodeImage(webp.substr(0, webp.size() / 2));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << image.status();
  image = DecodeImage(webp.substr(0, 20));
  ASSERT_FALSE(image.ok());
  EXPECT_NE(image.status().message().find("truncated"), std::string::npos) << image.status();
}

TEST(DecodeImageTest, CorruptDataIsAnError) {
  std::string jpeg = EncodeJpeg(32, 32);
  // SOF0's sample precision byte: 7 bits per sample does not exist.
  const size_t sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  jpeg[sof + 4] = '\x07';
  absl::StatusOr<DecodedImage> image = DecodeImage(jpeg);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(image.status().message().find("DecodeJpeg"), std::string::npos) << image.status();

  std::vector<uint8_t> pixels = Gradient(16, 16);
  std::string png = EncodePng(16, 16, PNG_COLOR_TYPE_RGB, pixels);
  png[20] ^= 0x55;  // IHDR payload: its CRC no longer matches
  image = DecodeImage(png);
  ASSERT_FALSE(image.ok());
  EXPECT_NE(image.status().message().find("DecodePng"), std::string::npos) << image.status();
}

TEST(DecodeImageTest, DecompressionBombIsRefusedBeforeAllocating) {
  std::string jpeg = EncodeJpeg(16, 16);
  // SOF0 holds height then width as big-endian 16-bit after the length and precision.
  const size_t sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  jpeg[sof + 5] = '\xEA';
  jpeg[sof + 6] = '\x60';  // 60000
  jpeg[sof + 7] = '\xEA';
  jpeg[sof + 8] = '\x60';
  absl::StatusOr<DecodedImage> image = DecodeImage(jpeg);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(image.status().message().find("60000x60000"), std::string::npos) << image.status();

  DecodeOptions small;
  small.max_pixels = 100;
  image = DecodeImage(EncodeJpeg(11, 10), small);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kResourceExhausted);
  std::vector<uint8_t> pixels = Gradient(11, 10);
  image = DecodeImage(EncodePng(11, 10, PNG_COLOR_TYPE_RGB, pixels), small);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kResourceExhausted);
  uint8_t* output = nullptr;
  const size_t size = WebPEncodeLosslessRGB(pixels.data(), 11, 10, 33, &output);
  std::string webp(reinterpret_cast<char*>(output), size);
  WebPFree(output);
  image = DecodeImage(webp, small);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(DecodeImageTest, UnsupportedAndUnknownFormats) {
  absl::StatusOr<DecodedImage> image = DecodeImage(std::string("GIF89a\x01\x00\x01\x00", 10));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(image.status().message().find("GIF"), std::string::npos);
  image = DecodeImage("BM\x00\x00");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kUnimplemented);
  image = DecodeImage("hello, world");
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(image.status().message().find("68 65 6c 6c"), std::string::npos) << image.status();
  image = DecodeImage("");
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
}

// An EXIF TIFF block with one IFD entry: Orientation (0x0112), SHORT, count 1.
std::string ExifBlock(int orientation, bool little_endian) {
  auto u16 = [&](int value) {
    return little_endian ? std::string{static_cast<char>(value & 0xFF), static_cast<char>(value >> 8)}
                         : std::string{static_cast<char>(value >> 8), static_cast<char>(value & 0xFF)};
  };
  auto u32 = [&](int value) {
    return little_endian ? u16(value & 0xFFFF) + u16(value >> 16) : u16(value >> 16) + u16(value & 0xFFFF);
  };
  return std::string(little_endian ? "II" : "MM") + u16(42) + u32(8) + u16(1) + u16(0x0112) + u16(3) +
         u32(1) + u16(orientation) + u16(0) + u32(0);
}

TEST(ExifOrientationTest, ReadsBothByteOrdersAndToleratesGarbage) {
  for (int orientation = 1; orientation <= 8; ++orientation) {
    EXPECT_EQ(ExifOrientation(ExifBlock(orientation, true)), orientation);
    EXPECT_EQ(ExifOrientation(ExifBlock(orientation, false)), orientation);
  }
  EXPECT_EQ(ExifOrientation(ExifBlock(9, true)), 1);
  EXPECT_EQ(ExifOrientation("II*"), 1);
  EXPECT_EQ(ExifOrientation(ExifBlock(6, true).substr(0, 15)), 1);
}

TEST(ExifOrientationTest, JpegWithOrientationSixIsRotated) {
  std::string jpeg = EncodeJpeg(8, 4);
  std::string payload = std::string("Exif\0\0", 6) + ExifBlock(6, false);
  std::string app1 = "\xFF\xE1";
  app1.push_back(static_cast<char>((payload.size() + 2) >> 8));
  app1.push_back(static_cast<char>((payload.size() + 2) & 0xFF));
  jpeg.insert(2, app1 + payload);
  absl::StatusOr<DecodedImage> plain = DecodeImage(EncodeJpeg(8, 4));
  absl::StatusOr<DecodedImage> rotated = DecodeImage(jpeg);
  ASSERT_TRUE(rotated.ok()) << rotated.status();
  EXPECT_EQ(rotated->width, 4);
  EXPECT_EQ(rotated->height, 8);
  // Orientation 6: display = stored rotated 90 degrees clockwise; upright(y, x) = stored(H-1-x, y).
  for (int y = 0; y < 8; ++y) {
    for (int x = 0; x < 4; ++x) {
      for (int channel = 0; channel < 3; ++channel) {
        EXPECT_EQ(rotated->pixels[(y * 4 + x) * 3 + channel], plain->pixels[((3 - x) * 8 + y) * 3 + channel]);
      }
    }
  }
  DecodeOptions ignore;
  ignore.apply_exif_orientation = false;
  absl::StatusOr<DecodedImage> stored = DecodeImage(jpeg, ignore);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->width, 8);
}

TEST(DecodeImageTest, JpegColumnWindowMatchesTheWholeDecodeInTheColumnsAskedFor) {
  // 4:2:0 (jpeg_set_defaults), so fancy upsampling blends chroma across the window's edges.
  const std::string jpeg = EncodeJpeg(200, 64, 90);
  absl::StatusOr<DecodedImage> whole = DecodeImage(jpeg);
  ASSERT_TRUE(whole.ok()) << whole.status();
  DecodeOptions options;
  options.needed_columns = [](int64_t height, int64_t width) {
    EXPECT_EQ(height, 64);
    EXPECT_EQ(width, 200);
    return std::pair<int64_t, int64_t>{70, 130};
  };
  absl::StatusOr<DecodedImage> window = DecodeImage(jpeg, options);
  ASSERT_TRUE(window.ok()) << window.status();
  EXPECT_EQ(window->picture_width, 200);
  EXPECT_EQ(window->height, 64);
  EXPECT_EQ(window->first_column % 16, 0);  // whole iMCUs
  EXPECT_LE(window->first_column, 70 - 16);
  EXPECT_GE(window->first_column + window->width, 130 + 16);
  EXPECT_LT(window->width, 200);
  // The window's outermost columns may differ (fancy upsampling sees no neighbour there): that is
  // what the margin is for. Everything asked for must be bit-identical.
  for (int64_t y = 0; y < 64; ++y) {
    for (int64_t column = 70; column < 130; ++column) {
      for (int64_t channel = 0; channel < 3; ++channel) {
        ASSERT_EQ(window->pixels[(y * window->width + column - window->first_column) * 3 + channel],
                  whole->pixels[(y * 200 + column) * 3 + channel])
            << "row " << y << ", column " << column;
      }
    }
  }
  // Asking for every column decodes the whole picture, as without the option.
  options.needed_columns = [](int64_t, int64_t width) { return std::pair<int64_t, int64_t>{0, width}; };
  absl::StatusOr<DecodedImage> all = DecodeImage(jpeg, options);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->picture_width, 0);
  EXPECT_EQ(all->pixels, whole->pixels);
}

}  // namespace
}  // namespace flotilla::image
