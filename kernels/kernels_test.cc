// Every kernel against the eager reference (the formula the model files use), on CPU here and on
// CUDA where a device is present — the way llama.cpp's test-backend-ops compares backends.
#include "kernels/kernels.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace flotilla::kernels {
namespace {

// transformers' LlamaRMSNorm.forward, op for op.
at::Tensor EagerRmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  const at::Tensor as_float = hidden_states.to(at::kFloat);
  const at::Tensor variance = as_float.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (as_float * at::rsqrt(variance + epsilon)).to(hidden_states.scalar_type());
}

at::Tensor EagerSiluAndMul(const at::Tensor& gate_and_up) {
  const auto halves = gate_and_up.chunk(2, -1);
  return at::silu(halves[0]) * halves[1];
}

double MaxAbsDifference(const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.numel() == 0) return 0;
  return (actual.to(at::kFloat) - expected.to(at::kFloat)).abs().max().item<double>();
}

double Tolerance(at::ScalarType type) {
  // bfloat16/float16: one unit in the last place of values near 1-8 (the summation order differs).
  return type == at::kFloat ? 1e-5 : (type == at::kBFloat16 ? 3e-2 : 4e-3);
}

class KernelTest : public testing::TestWithParam<std::tuple<at::ScalarType, std::vector<int64_t>>> {};

TEST_P(KernelTest, CpuRmsNormMatchesEager) {
  const auto& [type, shape] = GetParam();
  at::manual_seed(0);
  const at::Tensor hidden_states = at::randn(shape).mul(3).to(type);
  const at::Tensor weight = at::randn({shape.back()}).to(type);
  const at::Tensor expected = EagerRmsNorm(hidden_states, weight, 1e-6);
  const at::Tensor actual = RmsNorm(hidden_states, weight, 1e-6);
  ASSERT_EQ(actual.sizes(), expected.sizes());
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type());
  EXPECT_LE(MaxAbsDifference(actual, expected), Tolerance(type));
}

TEST_P(KernelTest, CpuSiluAndMulMatchesEager) {
  const auto& [type, shape] = GetParam();
  std::vector<int64_t> doubled = shape;
  doubled.back() *= 2;
  at::manual_seed(1);
  const at::Tensor gate_and_up = at::randn(doubled).mul(4).to(type);
  const at::Tensor expected = EagerSiluAndMul(gate_and_up);
  const at::Tensor actual = SiluAndMul(gate_and_up);
  ASSERT_EQ(actual.sizes(), expected.sizes());
  EXPECT_LE(MaxAbsDifference(actual, expected), Tolerance(type) * 4);
}

INSTANTIATE_TEST_SUITE_P(
    DtypesAndShapes, KernelTest,
    testing::Combine(testing::Values(at::kFloat, at::kBFloat16, at::kHalf),
                     testing::Values(std::vector<int64_t>{1, 576}, std::vector<int64_t>{3, 7, 64},
                                     std::vector<int64_t>{0, 32}, std::vector<int64_t>{5, 1})));

// One test for the whole CUDA matrix, so a machine without a GPU reports one skip, not one per case.
TEST(CudaKernelTest, CudaMatchesTheCpuTwinForEveryDtypeAndShape) {
  if (!HasCudaKernels() || !at::hasCUDA()) {
    GTEST_SKIP() << "no CUDA device here: the CUDA kernels are compiled and linked, and run where a GPU is";
  }
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const std::vector<int64_t>& shape : {std::vector<int64_t>{1, 576}, std::vector<int64_t>{3, 7, 64},
                                              std::vector<int64_t>{0, 32}, std::vector<int64_t>{5, 1}}) {
      SCOPED_TRACE(testing::Message() << c10::toString(type) << " " << at::IntArrayRef(shape));
      at::manual_seed(2);
      const at::Tensor hidden_states = at::randn(shape).mul(3).to(type);
      const at::Tensor weight = at::randn({shape.back()}).to(type);
      EXPECT_LE(MaxAbsDifference(RmsNorm(hidden_states.cuda(), weight.cuda(), 1e-5).cpu(),
                                 RmsNorm(hidden_states, weight, 1e-5)),
                Tolerance(type));
      std::vector<int64_t> doubled = shape;
      doubled.back() *= 2;
      const at::Tensor gate_and_up = at::randn(doubled).mul(4).to(type);
      EXPECT_LE(MaxAbsDifference(SiluAndMul(gate_and_up.cuda()).cpu(), SiluAndMul(gate_and_up)), Tolerance(type) * 4);
    }
  }
}

TEST(KernelErrorsTest, RmsNormRejectsAWeightOfTheWrongSize) {
  try {
    RmsNorm(at::ones({2, 8}), at::ones({7}), 1e-6);
    FAIL() << "expected an error";
  } catch (const c10::Error& error) {
    EXPECT_NE(std::string(error.what_without_backtrace()).find("weight must be [8]"), std::string::npos);
  }
}

TEST(KernelErrorsTest, SiluAndMulRejectsAnOddLastDimension) {
  EXPECT_THROW(SiluAndMul(at::ones({2, 7})), c10::Error);
}

}  // namespace
}  // namespace flotilla::kernels
