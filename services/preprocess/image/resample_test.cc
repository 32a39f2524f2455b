// resample.h against ATen's own antialiased uint8 kernels, bit for bit, on random pictures.
#include "services/preprocess/image/resample.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <vector>

namespace flotilla::image {
namespace {

// Resizes an RGB [H, W, 3] picture with resample.h, keeping output rows [top, top + rows) and
// columns [left, left + columns); returns [3, rows, columns] uint8.
torch::Tensor ResizeWithKernels(const torch::Tensor& hwc, int64_t out_height, int64_t out_width, int64_t top,
                                int64_t left, int64_t rows, int64_t columns, ResampleFilter filter) {
  const int64_t height = hwc.size(0), width = hwc.size(1);
  const ResampleAxis column_axis = MakeResampleAxis(width, out_width, filter);
  const ResampleAxis row_axis = MakeResampleAxis(height, out_height, filter);
  EXPECT_TRUE(column_axis.exact && row_axis.exact);
  const int64_t row_bytes = (columns * 4 + 15) / 16 * 16;
  std::vector<uint8_t> padded(static_cast<size_t>(width * 3 + HorizontalOverreadBytes(column_axis)));
  std::vector<uint8_t> intermediate(static_cast<size_t>(height * row_bytes));
  for (int64_t y = 0; y < height; ++y) {
    std::memcpy(padded.data(), hwc.data_ptr<uint8_t>() + y * width * 3, static_cast<size_t>(width * 3));
    ResampleRowHorizontally(padded.data(), column_axis, left, left + columns, intermediate.data() + y * row_bytes);
  }
  torch::Tensor result = torch::empty({3, rows, columns}, torch::kUInt8);
  std::vector<uint8_t> row(static_cast<size_t>(row_bytes));
  auto values = result.accessor<uint8_t, 3>();
  for (int64_t y = 0; y < rows; ++y) {
    ResampleRowVertically(intermediate.data(), 0, row_bytes, row_bytes, row_axis, top + y, row.data());
    for (int64_t x = 0; x < columns; ++x) {
      for (int64_t c = 0; c < 3; ++c) values[c][y][x] = row[static_cast<size_t>(x * 4 + c)];
    }
  }
  return result;
}

void ExpectSameAsAten(int64_t height, int64_t width, int64_t out_height, int64_t out_width, ResampleFilter filter) {
  SCOPED_TRACE(testing::Message() << width << "x" << height << " -> " << out_width << "x" << out_height);
  torch::manual_seed(height * 7919 + width * 31 + out_height + out_width);
  const torch::Tensor chw = torch::randint(0, 256, {3, height, width}, torch::kUInt8);
  const std::vector<int64_t> size = {out_height, out_width};
  const torch::Tensor expected =
      filter == ResampleFilter::kBicubic
          ? at::_upsample_bicubic2d_aa(chw.unsqueeze(0), size, false, std::nullopt, std::nullopt)[0]
          : at::_upsample_bilinear2d_aa(chw.unsqueeze(0), size, false, std::nullopt, std::nullopt)[0];
  const torch::Tensor hwc = chw.permute({1, 2, 0}).contiguous();
  EXPECT_TRUE(torch::equal(ResizeWithKernels(hwc, out_height, out_width, 0, 0, out_height, out_width, filter), expected));
  // A crop of the output is the same crop of the full output.
  const int64_t top = out_height / 3, left = out_width / 4;
  const int64_t rows = std::max<int64_t>(1, out_height / 2), columns = std::max<int64_t>(1, out_width / 2);
  EXPECT_TRUE(torch::equal(ResizeWithKernels(hwc, out_height, out_width, top, left, rows, columns, filter),
                           expected.slice(1, top, top + rows).slice(2, left, left + columns)));
}

TEST(ResampleTest, BicubicMatchesAtenBitForBit) {
  for (auto [h, w, oh, ow] : std::vector<std::array<int64_t, 4>>{
           {480, 640, 224, 298}, {640, 480, 298, 224}, {517, 333, 347, 224}, {1365, 2048, 224, 336},
           {90, 1000, 224, 2488}, {3, 7, 224, 522}, {1, 1, 224, 224}, {120, 200, 64, 106}, {37, 101, 224, 611},
           {480, 640, 336, 448}, {224, 224, 224, 224}, {300, 224, 224, 224}, {768, 1024, 384, 384}}) {
    ExpectSameAsAten(h, w, oh, ow, ResampleFilter::kBicubic);
  }
}

TEST(ResampleTest, BilinearMatchesAtenBitForBit) {
  const std::string capability = at::get_cpu_capability();
  if (capability != "AVX2" && capability != "AVX512") GTEST_SKIP() << "torchvision resizes bilinear in float32 here";
  for (auto [h, w, oh, ow] : std::vector<std::array<int64_t, 4>>{
           {480, 640, 224, 224}, {517, 333, 384, 384}, {90, 1000, 224, 224}, {3, 7, 224, 224}, {1365, 2048, 224, 224}}) {
    ExpectSameAsAten(h, w, oh, ow, ResampleFilter::kBilinear);
  }
}

}  // namespace
}  // namespace flotilla::image
