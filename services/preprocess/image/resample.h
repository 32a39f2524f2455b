// Exact re-implementation of ATen's antialiased uint8 resampling on CPU (what torchvision's resize
// runs for uint8 bicubic, and for uint8 bilinear on AVX2 CPUs), restricted to the output pixels a
// caller keeps. The image processors use it to resize, center crop, rescale and normalize a picture
// in one pass over only the pixels that survive the crop, writing straight into the batch tensor.
//
//   ResampleAxis columns = MakeResampleAxis(640, 298, ResampleFilter::kBicubic);
//   ResampleAxis rows = MakeResampleAxis(480, 224, ResampleFilter::kBicubic);
//   // columns.first[x] .. columns.first[x] + columns.count[x] - 1: the input columns of output x
//   ResampleRowsHorizontally(input_row, columns, 37, 261, output_row);   // RGB in, RGBX out
//
// Why it is exact: ATen computes the per-axis weights in double, scales them to int16 with one
// precision per axis (HelperInterpBase::_compute_index_ranges_int16_weights), and runs each pass as
// an integer sum `(sum(w * p) + 2^(precision - 1)) >> precision` clamped to 0..255, horizontal pass
// first into a uint8 intermediate. Integer sums do not depend on the order of the terms, so a
// different loop order (or SIMD width) gives the same bytes, and an output pixel depends only on its
// own input taps, so computing a subset of the outputs gives the same bytes for that subset.
// resample_test.cc checks every kernel against at::_upsample_{bicubic,bilinear}2d_aa bit for bit.
//
// Thread-safety: ResampleAxis is immutable once made; the functions are reentrant.
#pragma once

#include <cstdint>
#include <vector>

namespace flotilla::image {

enum class ResampleFilter { kBilinear, kBicubic };

// One axis of an antialiased resize from input_size to output_size (align_corners=False, no
// explicit scale factor: what torchvision passes).
struct ResampleAxis {
  int64_t input_size = 0;
  int64_t output_size = 0;
  int taps = 0;       // weights per output index (ATen's max_interp_size)
  int precision = 0;  // fixed-point bits of the int16 weights
  // False when the int16 weights depend on whether the filter polynomial is evaluated with fused
  // multiply-adds (ATen's build may or may not contract it); callers then use ATen itself.
  bool exact = true;
  std::vector<int32_t> first;    // [output_size] first input index
  std::vector<int32_t> count;    // [output_size] taps actually used (first + count <= input_size)
  std::vector<int16_t> weights;  // [output_size * taps], zero past count
  // The same weights laid out for the AVX2 horizontal kernel: per output index, groups of 4 taps as
  // 16 int16 [w0 w1 x4 | w2 w3 x4]; taps_padded = taps rounded up to 4.
  int taps_padded = 0;
  std::vector<int16_t> weights_avx2;
};

ResampleAxis MakeResampleAxis(int64_t input_size, int64_t output_size, ResampleFilter filter);

// Bytes that the horizontal kernel may read past the last input pixel it uses; input rows closer
// than this to the end of their buffer must be copied into a padded buffer first.
int64_t HorizontalOverreadBytes(const ResampleAxis& axis);

// Output columns [out_begin, out_end) of one row: `input` holds the row's RGB pixels (3 bytes
// each) from column `input_first_column` on (a decoded window, DecodedImage::first_column), at
// least up to the last column those outputs read; `output` receives (out_end - out_begin) RGBX
// pixels (4 bytes, the 4th is 0).
void ResampleRowHorizontally(const uint8_t* input, const ResampleAxis& axis, int64_t out_begin,
                             int64_t out_end, uint8_t* output, int64_t input_first_column = 0);

// Output row `out_row` of the vertical pass. `intermediate` holds the input rows from `first_row`
// on (at least up to the last row out_row uses), each `row_bytes` bytes long at `stride` bytes
// apart (row_bytes a multiple of 16, stride >= row_bytes). Channel-agnostic: every byte is
// resampled on its own.
void ResampleRowVertically(const uint8_t* intermediate, int64_t first_row, int64_t stride, int64_t row_bytes,
                           const ResampleAxis& axis, int64_t out_row, uint8_t* output);

}  // namespace flotilla::image
