// Every kernel against the eager reference (the formula the model files use), on CPU here and on
// CUDA where a device is present — the way llama.cpp's test-backend-ops compares backends.
#include "kernels/kernels.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "kernels/cpu/cpu_kernels.h"

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

// transformers' apply_rotary_pos_emb, op for op.
std::pair<at::Tensor, at::Tensor> EagerRotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos_in,
                                              const at::Tensor& sin_in) {
  auto rotate_half = [](const at::Tensor& x) {
    const int64_t half = x.size(-1) / 2;
    return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  };
  const at::Tensor cos = cos_in.unsqueeze(1);
  const at::Tensor sin = sin_in.unsqueeze(1);
  return {q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin};
}

// float32: within 1e-6 of the largest expected magnitude (the stated tolerance in kernels.h).
// bfloat16 / float16: within one rounding of the dtype at the largest magnitude.
void ExpectWithinKernelTolerance(const at::Tensor& actual, const at::Tensor& expected) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type());
  if (expected.numel() == 0) return;
  const double scale = std::max(expected.to(at::kFloat).abs().max().item<double>(), 1e-30);
  const double relative = MaxAbsDifference(actual, expected) / scale;
  const at::ScalarType type = expected.scalar_type();
  const double bound = type == at::kFloat ? 1e-6 : (type == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024);
  EXPECT_LE(relative, bound) << c10::toString(type) << " " << expected.sizes();
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

TEST_P(KernelTest, CpuRmsNormIsWithinTheStatedTolerance) {
  const auto& [type, shape] = GetParam();
  at::manual_seed(3);
  const at::Tensor hidden_states = at::randn(shape).mul(3).add(0.5).to(type);
  const at::Tensor weight = at::randn({shape.back()}).add(1).to(type);
  ExpectWithinKernelTolerance(RmsNorm(hidden_states, weight, 1e-6), EagerRmsNorm(hidden_states, weight, 1e-6));
}

TEST_P(KernelTest, CpuFusedAddRmsNormMatchesTheDecoderLayersAddThenNorm) {
  const auto& [type, shape] = GetParam();
  at::manual_seed(4);
  const at::Tensor hidden_states = at::randn(shape).mul(2).add(0.25).to(type);
  const at::Tensor residual_before = at::randn(shape).mul(3).add(-0.5).to(type);
  const at::Tensor weight = at::randn({shape.back()}).add(1).to(type);
  const at::Tensor expected_residual = residual_before + hidden_states;
  const at::Tensor expected = EagerRmsNorm(expected_residual, weight, 1e-5);
  at::Tensor residual = residual_before.clone();
  const at::Tensor actual = FusedAddRmsNorm(hidden_states, residual, weight, 1e-5);
  EXPECT_TRUE(at::equal(residual, expected_residual)) << "the residual add rounds as the eager add";
  ExpectWithinKernelTolerance(actual, expected);
}

// The out-of-place form the decoder layers call (UseKernelForward::AddAndForward): the layer's
// input, which output_hidden_states may hold, must come back untouched.
TEST_P(KernelTest, CpuAddRmsNormReturnsTheNormAndTheSumAndLeavesTheResidual) {
  const auto& [type, shape] = GetParam();
  at::manual_seed(14);
  const at::Tensor hidden_states = at::randn(shape).mul(2).add(0.25).to(type);
  const at::Tensor residual = at::randn(shape).mul(3).add(-0.5).to(type);
  const at::Tensor residual_before = residual.clone();
  const at::Tensor weight = at::randn({shape.back()}).add(1).to(type);
  const auto [normalized, sum] = cpu::AddRmsNorm(hidden_states, residual, weight, 1e-5);
  EXPECT_TRUE(at::equal(residual, residual_before)) << "the residual is read, not written";
  EXPECT_TRUE(at::equal(sum, residual_before + hidden_states)) << "the sum rounds as the eager add";
  ExpectWithinKernelTolerance(normalized, EagerRmsNorm(residual_before + hidden_states, weight, 1e-5));
  // A strided residual (a view) reads the same values.
  if (hidden_states.numel() > 0 && hidden_states.dim() >= 2) {
    const at::Tensor transposed = residual_before.transpose(0, 1).contiguous().transpose(0, 1);
    const auto [normalized_from_view, sum_from_view] = cpu::AddRmsNorm(hidden_states, transposed, weight, 1e-5);
    EXPECT_TRUE(at::equal(sum_from_view, sum));
    EXPECT_TRUE(at::equal(normalized_from_view, normalized));
  }
}

TEST_P(KernelTest, CpuSiluAndMulOfTwoProjectionsMatchesEager) {
  const auto& [type, shape] = GetParam();
  at::manual_seed(5);
  const at::Tensor gate = at::randn(shape).mul(4).add(0.1).to(type);
  const at::Tensor up = at::randn(shape).mul(2).add(-0.1).to(type);
  ExpectWithinKernelTolerance(SiluAndMul(gate, up), at::silu(gate) * up);
  ExpectWithinKernelTolerance(SiluAndMul(at::cat({gate, up}, -1)), at::silu(gate) * up);
}

INSTANTIATE_TEST_SUITE_P(
    DtypesAndShapes, KernelTest,
    testing::Combine(testing::Values(at::kFloat, at::kBFloat16, at::kHalf),
                     testing::Values(std::vector<int64_t>{1, 576}, std::vector<int64_t>{3, 7, 64},
                                     std::vector<int64_t>{0, 32}, std::vector<int64_t>{5, 1})));

class RotaryTest : public testing::TestWithParam<std::tuple<at::ScalarType, std::vector<int64_t>>> {};

// Shapes: batch, query heads, key/value heads, length, head_dim. The queries and keys are the
// projections' outputs viewed [batch, length, heads, head_dim] and transposed, as in the model files.
TEST_P(RotaryTest, CpuRotaryInPlaceMatchesApplyRotaryPosEmb) {
  const auto& [type, dims] = GetParam();
  const int64_t batch = dims[0], heads = dims[1], kv_heads = dims[2], length = dims[3], head_dim = dims[4];
  at::manual_seed(6);
  at::Tensor query = at::randn({batch, length, heads, head_dim}).mul(2).add(0.3).to(type).transpose(1, 2);
  at::Tensor key = at::randn({batch, length, kv_heads, head_dim}).mul(2).add(-0.3).to(type).transpose(1, 2);
  const at::Tensor angles = at::rand({batch, length, head_dim / 2}).mul(100);
  const at::Tensor cos = at::cat({angles.cos(), angles.cos()}, -1).to(type);
  const at::Tensor sin = at::cat({angles.sin(), angles.sin()}, -1).to(type);
  const auto [expected_query, expected_key] = EagerRotary(query, key, cos, sin);
  RotaryEmbeddingInPlace(query, key, cos, sin);
  if (type == at::kFloat) {
    ExpectWithinKernelTolerance(query, expected_query);
    ExpectWithinKernelTolerance(key, expected_key);
  } else {
    // Each eager op's rounding is reproduced, so reduced precision matches exactly.
    EXPECT_TRUE(at::equal(query, expected_query));
    EXPECT_TRUE(at::equal(key, expected_key));
  }
}

INSTANTIATE_TEST_SUITE_P(
    DtypesAndShapes, RotaryTest,
    testing::Combine(testing::Values(at::kFloat, at::kBFloat16, at::kHalf),
                     testing::Values(std::vector<int64_t>{1, 9, 3, 7, 64}, std::vector<int64_t>{2, 4, 4, 1, 32},
                                     std::vector<int64_t>{1, 2, 1, 0, 16}, std::vector<int64_t>{3, 2, 2, 5, 2})));

// Element by element (not relative to the largest magnitude, so tiny results count): NaN where
// eager's is NaN, the same infinity, finite values within `relative` of eager's or `absolute` (for
// results so small that a dtype conversion may flush them).
void ExpectEachElementClose(const at::Tensor& actual, const at::Tensor& expected, double relative, double absolute) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  const at::Tensor actual_float = actual.to(at::kFloat).contiguous().flatten();
  const at::Tensor expected_float = expected.to(at::kFloat).contiguous().flatten();
  for (int64_t i = 0; i < expected_float.numel(); ++i) {
    const float want = expected_float[i].item<float>();
    const float got = actual_float[i].item<float>();
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "element " << i << ": " << got << " where eager has NaN";
    } else if (std::isinf(want)) {
      EXPECT_EQ(got, want) << "element " << i;
    } else {
      EXPECT_LE(std::abs(got - want), relative * std::abs(want) + absolute)
          << "element " << i << ": " << got << " vs eager " << want;
    }
  }
}

// Gates where exp(-gate) overflows or underflows float32 (|gate| > 88), zeros of both signs and
// NaN, in a row of 16 + 4 elements (a full vector and a masked tail), every dtype.
TEST(KernelEdgeTest, CpuSiluAndMulAtExtremeGatesMatchesEagerElementByElement) {
  const std::vector<float> gates = {-1e4f, -200.0f, -104.0f, -88.0f, -87.0f, -20.0f, -1.0f, -0.0f, 0.0f, 1.0f,
                                    20.0f, 87.0f,   88.0f,   104.0f, 200.0f, 1e4f,   NAN,   -3.0f, 3.0f, 0.5f};
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor gate = at::tensor(gates).reshape({1, 20}).to(type);
    const at::Tensor up = at::linspace(-2.0, 2.5, 20).reshape({1, 20}).to(type);
    const double relative = type == at::kFloat ? 1e-5 : (type == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024);
    SCOPED_TRACE(c10::toString(type));
    ExpectEachElementClose(SiluAndMul(gate, up), at::silu(gate) * up, relative, 1e-30);
    ExpectEachElementClose(SiluAndMul(at::cat({gate, up}, -1)), at::silu(gate) * up, relative, 1e-30);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The AVX-512 rows (Note [Register-resident rows] in cpu/cpu_kernels.cc) also give eager's
// silu(+inf) = inf, silu(-inf) = NaN and silu(+-1e30) element by element; the chunked loop's exp
// (VectorExp, which the other CPUs and float16 run) is held to the kernels' tolerance for them
// below (CpuSiluAndMulOfHugeGatesOnTheChunkedLoops).
TEST(KernelEdgeTest, CpuSiluAndMulOfInfinitiesMatchesEagerWithAvx512) {
  if (!__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl") ||
      !__builtin_cpu_supports("avx512dq")) {
    GTEST_SKIP() << "no AVX-512 on this CPU";
  }
  const std::vector<float> gates = {INFINITY, -INFINITY, 1e30f, -1e30f, 3e38f, -3e38f, 1.0f};
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    const at::Tensor gate = at::tensor(gates).reshape({1, 7}).to(type);
    const at::Tensor up = at::full({1, 7}, 1.5).to(type);
    SCOPED_TRACE(c10::toString(type));
    ExpectEachElementClose(SiluAndMul(gate, up), at::silu(gate) * up, type == at::kFloat ? 1e-6 : 1.0 / 128, 1e-30);
  }
}
#endif

// The paths other CPUs take, on this one: the chunked loops that float16 and CPUs without AVX-512
// run, for float32 and bfloat16 too, and the AVX-512 rows rounding bfloat16 with integer
// instructions (CPUs without AVX512-BF16); on ragged rows shorter and longer than one 512-element
// chunk, with a masked tail.
class KernelOtherPathTest : public testing::TestWithParam<bool> {};

TEST_P(KernelOtherPathTest, CpuKernelsMatchEager) {
  const bool avx512_rows = GetParam();
  cpu::SetAvx512RowsForTesting(avx512_rows, /*bfloat16_instructions=*/false);
  struct Restore {
    ~Restore() { cpu::SetAvx512RowsForTesting(true, true); }
  } restore;
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(std::string(c10::toString(type)) + (avx512_rows ? " AVX-512 rows" : " chunked loops"));
    for (const std::vector<int64_t>& shape : {std::vector<int64_t>{3, 7, 100}, std::vector<int64_t>{2, 1100}}) {
      at::manual_seed(21);
      const at::Tensor hidden_states = at::randn(shape).mul(2).add(0.25).to(type);
      const at::Tensor residual = at::randn(shape).mul(3).add(-0.5).to(type);
      const at::Tensor weight = at::randn({shape.back()}).add(1).to(type);
      ExpectWithinKernelTolerance(RmsNorm(hidden_states, weight, 1e-6), EagerRmsNorm(hidden_states, weight, 1e-6));
      const auto [normalized, sum] = cpu::AddRmsNorm(hidden_states, residual, weight, 1e-5);
      EXPECT_TRUE(at::equal(sum, residual + hidden_states));
      ExpectWithinKernelTolerance(normalized, EagerRmsNorm(residual + hidden_states, weight, 1e-5));
      const at::Tensor gate = at::randn(shape).mul(4).to(type);
      ExpectWithinKernelTolerance(SiluAndMul(gate, hidden_states), at::silu(gate) * hidden_states);
    }
    at::Tensor query = at::randn({1, 7, 9, 64}).mul(2).to(type).transpose(1, 2);
    at::Tensor key = at::randn({1, 7, 3, 64}).mul(2).to(type).transpose(1, 2);
    const at::Tensor angles = at::rand({1, 7, 32}).mul(100);
    const at::Tensor cos = at::cat({angles.cos(), angles.cos()}, -1).to(type);
    const at::Tensor sin = at::cat({angles.sin(), angles.sin()}, -1).to(type);
    const auto [expected_query, expected_key] = EagerRotary(query, key, cos, sin);
    RotaryEmbeddingInPlace(query, key, cos, sin);
    ExpectWithinKernelTolerance(query, expected_query);
    ExpectWithinKernelTolerance(key, expected_key);
    if (type == at::kBFloat16) EXPECT_TRUE(at::equal(query, expected_query) && at::equal(key, expected_key));
  }
}

INSTANTIATE_TEST_SUITE_P(ChunkedAndIntegerRounding, KernelOtherPathTest, testing::Values(false, true));

// Gates of 1e7 and more on the chunked loops: VectorExp's argument reduction once overflowed there,
// and silu(1e7) came out 0 instead of 1e7.
TEST(KernelEdgeTest, CpuSiluAndMulOfHugeGatesOnTheChunkedLoops) {
  cpu::SetAvx512RowsForTesting(false, /*bfloat16_instructions=*/false);
  struct Restore {
    ~Restore() { cpu::SetAvx512RowsForTesting(true, true); }
  } restore;
  const std::vector<float> gates = {1e7f, -1e7f, 3e9f, -3e9f, 1e30f, -1e30f, 1.0f, -1.0f, 2e4f, -2e4f};
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    at::Tensor gate = at::tensor(gates).reshape({1, 10});
    if (type == at::kHalf) gate = gate.clamp(-4e4, 4e4);  // float16: 1.5 x 4e4 < 65504
    gate = gate.to(type);
    const at::Tensor up = at::full({1, 10}, 1.5).to(type);
    SCOPED_TRACE(c10::toString(type));
    ExpectWithinKernelTolerance(SiluAndMul(gate, up), at::silu(gate) * up);
  }
}

// The eager reference of paged attention: each token's keys gathered from the pools, then eager
// attention (float32 softmax) over its window.
at::Tensor EagerPagedAttention(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                               const std::vector<PagedAttentionToken>& tokens, double scaling) {
  const int64_t block_size = key_pool.size(1);
  const int64_t kv_heads = key_pool.size(2);
  const int64_t groups = query_tokens.size(1) / kv_heads;
  at::Tensor output = at::zeros_like(query_tokens);
  for (const PagedAttentionToken& token : tokens) {
    std::vector<int64_t> slots;
    for (int64_t position = token.first_key; position <= token.position; ++position) {
      slots.push_back(token.block_table[position / block_size] * block_size + position % block_size);
    }
    const at::Tensor index = at::tensor(slots, at::kLong);
    // [keys, kv_heads, head_dim] -> [heads, keys, head_dim]
    const at::Tensor keys = key_pool.flatten(0, 1).index_select(0, index).permute({1, 0, 2}).repeat_interleave(groups, 0);
    const at::Tensor values = value_pool.flatten(0, 1).index_select(0, index).permute({1, 0, 2}).repeat_interleave(groups, 0);
    const at::Tensor query = query_tokens[token.token].unsqueeze(1);  // [heads, 1, head_dim]
    const at::Tensor weights = at::softmax(at::matmul(query, keys.transpose(1, 2)) * scaling, -1, at::kFloat)
                                   .to(query.scalar_type());
    output[token.token].copy_(at::matmul(weights, values).squeeze(1));
  }
  return output;
}

TEST(PagedAttentionKernelTest, DecodeAndRaggedPrefillOverScatteredBlocksMatchEager) {
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(type));
    at::manual_seed(7);
    const int64_t block_size = 4, num_blocks = 12, heads = 6, kv_heads = 2, head_dim = 16;
    const at::Tensor key_pool = at::randn({num_blocks, block_size, kv_heads, head_dim}).add(0.1).to(type);
    const at::Tensor value_pool = at::randn({num_blocks, block_size, kv_heads, head_dim}).add(-0.1).to(type);
    // Sequence A decodes at position 9 (3 blocks); sequence B prefills positions 2..6 after 2
    // cached tokens; sequence C is one token long; D decodes with a sliding window of 3.
    const std::vector<int64_t> table_a = {7, 2, 10}, table_b = {5, 0}, table_c = {11}, table_d = {3, 8, 1};
    std::vector<PagedAttentionToken> tokens = {{0, 9, 0, table_a.data()}};
    for (int64_t position = 2; position <= 6; ++position) tokens.push_back({position - 1, position, 0, table_b.data()});
    tokens.push_back({6, 0, 0, table_c.data()});
    tokens.push_back({7, 10, 8, table_d.data()});
    const at::Tensor query_tokens = at::randn({8, heads, head_dim}).add(0.2).to(type);
    at::Tensor output = at::empty_like(query_tokens);
    PagedAttention(query_tokens, key_pool, value_pool, output, tokens, 0.25, std::nullopt);
    ExpectWithinKernelTolerance(output, EagerPagedAttention(query_tokens, key_pool, value_pool, tokens, 0.25));
    // No tokens at all (an empty step) leaves the output as it is.
    at::Tensor empty_output = at::empty({0, heads, head_dim}, query_tokens.options());
    PagedAttention(query_tokens.narrow(0, 0, 0), key_pool, value_pool, empty_output, {}, 0.25, std::nullopt);
  }
}

// bfloat16 both ways: vdpbf16ps on bfloat16 rows where the CPU has AVX512-BF16 (Note [bfloat16 dot
// products] in cpu/linear_cpu.cc), and float32 rows with widened weights (other CPUs).
struct RestoreCpuPaths {
  ~RestoreCpuPaths() { cpu::SetAvx512RowsForTesting(true, true); }
};
const std::vector<std::pair<at::ScalarType, bool>> kSkinnyPaths = {
    {at::kFloat, true}, {at::kBFloat16, true}, {at::kBFloat16, false}};

TEST(SkinnyLinearTest, MatchesLinearForDecodeSizedInputs) {
  RestoreCpuPaths restore;
  for (const auto& [type, dot_products] : kSkinnyPaths) {
    cpu::SetAvx512RowsForTesting(true, dot_products);
    for (const int64_t rows : {1, 2}) {
      for (const bool with_bias : {false, true}) {
        SCOPED_TRACE(testing::Message() << c10::toString(type) << " rows " << rows << " bias " << with_bias
                                        << (dot_products ? "" : " (widened)"));
        at::manual_seed(8);
        const at::Tensor input = at::randn({1, rows, 576}).add(0.1).to(type);
        const at::Tensor weight = at::randn({1536, 576}).mul(0.05).to(type);
        const at::Tensor bias = with_bias ? at::randn({1536}).to(type) : at::Tensor();
        ASSERT_TRUE(cpu::SkinnyLinearApplies(input, weight));
        const at::Tensor expected = at::linear(input, weight, bias);
        ExpectWithinKernelTolerance(cpu::SkinnyLinear(input, weight, bias), expected);
      }
    }
  }
  // More than 16 rows, mixed dtypes, a non-contiguous weight: not decode-sized, not taken.
  EXPECT_FALSE(cpu::SkinnyLinearApplies(at::ones({3, 64}), at::ones({128, 64})));
  EXPECT_FALSE(cpu::SkinnyLinearApplies(at::ones({1, 64}), at::ones({128, 64}, at::kBFloat16)));
  EXPECT_FALSE(cpu::SkinnyLinearApplies(at::ones({1, 64}), at::ones({64, 128}).t()));
}

// The sibling projections' one-pass product (q/k/v, gate/up): each output equals its own linear,
// across in_features that leave a masked tail (100), output counts that are not a multiple of the
// 4-output tile (66), and a thread slice that spans two weights.
TEST(SkinnyLinearTest, AGroupMatchesEachLinearAlone) {
  RestoreCpuPaths restore;
  for (const auto& [type, dot_products] : kSkinnyPaths) {
    cpu::SetAvx512RowsForTesting(true, dot_products);
    for (const int64_t rows : {1, 2}) {
      for (const int64_t in_features : {int64_t{576}, int64_t{100}}) {
        SCOPED_TRACE(testing::Message() << c10::toString(type) << " rows " << rows << " in " << in_features
                                        << (dot_products ? "" : " (widened)"));
        at::manual_seed(9);
        const at::Tensor input = at::randn({rows, 1, in_features}).add(0.1).to(type);
        const std::vector<at::Tensor> weights = {at::randn({576, in_features}).mul(0.05).to(type),
                                                 at::randn({66, in_features}).mul(0.05).to(type),
                                                 at::randn({192, in_features}).mul(0.05).to(type)};
        const std::vector<at::Tensor> biases = {at::randn({576}).to(type), at::randn({66}).to(type),
                                                at::randn({192}).to(type)};
        const std::vector<at::Tensor> outputs = cpu::SkinnyLinearGroup(input, weights, biases);
        ASSERT_EQ(outputs.size(), 3u);
        for (size_t member = 0; member < weights.size(); ++member) {
          const at::Tensor expected = at::linear(input, weights[member], biases[member]);
          ASSERT_EQ(outputs[member].sizes(), expected.sizes());
          EXPECT_EQ(outputs[member].scalar_type(), type);
          ExpectWithinKernelTolerance(outputs[member], expected);
        }
        // Without biases, and one thread: the same sums.
        at::set_num_threads(1);
        const std::vector<at::Tensor> one_thread = cpu::SkinnyLinearGroup(input, weights, {});
        at::set_num_threads(2);
        const std::vector<at::Tensor> two_threads = cpu::SkinnyLinearGroup(input, weights, {});
        for (size_t member = 0; member < weights.size(); ++member) {
          EXPECT_TRUE(at::equal(one_thread[member], two_threads[member]));
          ExpectWithinKernelTolerance(two_threads[member], at::linear(input, weights[member]));
        }
      }
    }
  }
  EXPECT_THROW(cpu::SkinnyLinearGroup(at::ones({1, 64}), {at::ones({128, 64}), at::ones({128, 32})}, {}), c10::Error);
}

// Prefill-sized products through oneDNN: what at::linear computes, within float32 summation order.
TEST(PrefillLinearTest, MatchesLinearForPrefillSizedInputs) {
  if (!cpu::PrefillLinearApplies(at::ones({4, 64}), at::ones({32, 64}))) GTEST_SKIP() << "no oneDNN in this libtorch";
  for (const int64_t rows : {1, 3, 128, 300}) {
    for (const bool with_bias : {false, true}) {
      SCOPED_TRACE(testing::Message() << "rows " << rows << " bias " << with_bias);
      at::manual_seed(10);
      const at::Tensor input = at::randn({1, rows, 576}).add(0.1);
      const at::Tensor weight = at::randn({1536, 576}).mul(0.05);
      const at::Tensor bias = with_bias ? at::randn({1536}) : at::Tensor();
      const at::Tensor actual = cpu::PrefillLinear(input, weight, bias);
      const at::Tensor expected = at::linear(input, weight, bias);
      ASSERT_EQ(actual.sizes(), expected.sizes());
      ExpectWithinKernelTolerance(actual, expected);
    }
  }
  EXPECT_FALSE(cpu::PrefillLinearApplies(at::ones({4, 64}, at::kBFloat16), at::ones({32, 64}, at::kBFloat16)));
  EXPECT_FALSE(cpu::PrefillLinearApplies(at::ones({4, 64}), at::ones({64, 32}).t()));
  EXPECT_THROW(cpu::PrefillLinear(at::ones({4, 64}), at::ones({32, 48}), at::Tensor()), c10::Error);
}

TEST(PagedAttentionKernelTest, RejectsATokenBeyondTheQueries) {
  const std::vector<int64_t> table = {0};
  at::Tensor output = at::empty({1, 2, 4});
  EXPECT_THROW(PagedAttention(at::ones({1, 2, 4}), at::ones({1, 4, 1, 4}), at::ones({1, 4, 1, 4}), output,
                              {{3, 0, 0, table.data()}}, 1.0, std::nullopt),
               c10::Error);
}

// A paged attention problem with random, non-zero inputs: each sequence's (query_length,
// context_length), its blocks scattered over the pool, its new tokens packed in order.
struct PagedCase {
  std::string name;
  int64_t heads, kv_heads, head_dim, block_size;
  std::vector<std::pair<int64_t, int64_t>> sequences;  // (query_length, context_length)
  std::optional<int64_t> sliding_window;
  std::optional<double> softcap;
};

struct PagedProblem {
  at::Tensor query_tokens, key_pool, value_pool;
  std::vector<std::vector<int64_t>> block_tables;
  std::vector<PagedAttentionToken> tokens;
  double scaling = 1.0;
};

PagedProblem MakePagedProblem(const PagedCase& paged_case, at::ScalarType type, uint64_t seed) {
  at::manual_seed(static_cast<int64_t>(seed));
  PagedProblem problem;
  int64_t num_blocks = 3;  // spare blocks nobody reads
  int64_t num_tokens = 0;
  for (const auto& [query_length, context_length] : paged_case.sequences) {
    num_blocks += (context_length + paged_case.block_size - 1) / paged_case.block_size;
    num_tokens += query_length;
  }
  std::vector<int64_t> blocks(static_cast<size_t>(num_blocks));
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(static_cast<uint32_t>(seed)));
  size_t next_block = 0;
  problem.block_tables.reserve(paged_case.sequences.size());  // tokens point into these tables
  int64_t row = 0;
  for (const auto& [query_length, context_length] : paged_case.sequences) {
    std::vector<int64_t>& table = problem.block_tables.emplace_back();
    for (int64_t block = 0; block * paged_case.block_size < context_length; ++block) table.push_back(blocks[next_block++]);
    for (int64_t position = context_length - query_length; position < context_length; ++position) {
      const int64_t first_key =
          paged_case.sliding_window ? std::max<int64_t>(0, position - *paged_case.sliding_window + 1) : 0;
      problem.tokens.push_back({row++, position, first_key, table.data()});
    }
  }
  const std::vector<int64_t> pool_shape = {num_blocks, paged_case.block_size, paged_case.kv_heads, paged_case.head_dim};
  // Softcapped cases get larger scores, so that the cap bites.
  const double query_scale = paged_case.softcap ? 6.0 : 1.0;
  problem.query_tokens = at::randn({num_tokens, paged_case.heads, paged_case.head_dim}).mul(query_scale).add(0.2).to(type);
  problem.key_pool = at::randn(pool_shape).add(0.1).to(type);
  problem.value_pool = at::randn(pool_shape).add(-0.1).to(type);
  problem.scaling = 1.0 / std::sqrt(static_cast<double>(paged_case.head_dim));
  return problem;
}

// The reference in float64: each token's keys and values gathered from the pools, scores, the
// softcap, softmax and the weighted sum, all in double, from the same (rounded) inputs.
at::Tensor Float64PagedAttention(const PagedProblem& problem, std::optional<double> softcap) {
  const int64_t block_size = problem.key_pool.size(1);
  const int64_t groups = problem.query_tokens.size(1) / problem.key_pool.size(2);
  at::Tensor output = at::zeros(problem.query_tokens.sizes(), at::kDouble);
  const at::Tensor keys_flat = problem.key_pool.flatten(0, 1).to(at::kDouble);
  const at::Tensor values_flat = problem.value_pool.flatten(0, 1).to(at::kDouble);
  for (const PagedAttentionToken& token : problem.tokens) {
    std::vector<int64_t> slots;
    for (int64_t position = token.first_key; position <= token.position; ++position) {
      slots.push_back(token.block_table[position / block_size] * block_size + position % block_size);
    }
    const at::Tensor index = at::tensor(slots, at::kLong);
    const at::Tensor keys = keys_flat.index_select(0, index).permute({1, 0, 2}).repeat_interleave(groups, 0);
    const at::Tensor values = values_flat.index_select(0, index).permute({1, 0, 2}).repeat_interleave(groups, 0);
    const at::Tensor query = problem.query_tokens[token.token].to(at::kDouble).unsqueeze(1);  // [heads, 1, head_dim]
    at::Tensor scores = at::matmul(query, keys.transpose(1, 2)) * problem.scaling;
    if (softcap) scores = at::tanh(scores / *softcap) * *softcap;
    output[token.token].copy_(at::matmul(at::softmax(scores, -1), values).squeeze(1));
  }
  return output;
}

// Within the kernel's stated tolerance of the float64 reference, relative to its largest magnitude:
// float32 1e-5 (float32 sums over up to a few thousand keys), bfloat16 / float16 one rounding.
void ExpectNearFloat64(const at::Tensor& actual, const at::Tensor& reference) {
  ASSERT_EQ(actual.sizes(), reference.sizes());
  if (reference.numel() == 0) return;
  const double scale = std::max(reference.abs().max().item<double>(), 1e-30);
  const double relative = (actual.to(at::kDouble) - reference).abs().max().item<double>() / scale;
  const at::ScalarType type = actual.scalar_type();
  const double bound = type == at::kFloat ? 1e-5 : (type == at::kBFloat16 ? 1.0 / 128 : 1.0 / 1024);
  EXPECT_LE(relative, bound) << c10::toString(type);
}

// Every row of the queries has a token; the CUDA matrix (below) runs the same cases.
std::vector<PagedCase> PagedCases() {
  return {
      {"empty batch", 4, 2, 32, 16, {}, std::nullopt, std::nullopt},
      {"one token", 4, 4, 64, 16, {{1, 1}}, std::nullopt, std::nullopt},
      {"decode, grouped-query", 8, 2, 128, 16, {{1, 37}, {1, 300}, {1, 16}}, std::nullopt, std::nullopt},
      {"ragged decode and chunks", 6, 2, 64, 8, {{1, 50}, {5, 9}, {7, 7}, {1, 1}, {3, 120}}, std::nullopt,
       std::nullopt},
      {"sliding window", 4, 1, 80, 16, {{1, 200}, {6, 70}, {1, 3}}, int64_t{24}, std::nullopt},
      {"softcap", 8, 4, 64, 16, {{1, 90}, {4, 40}}, std::nullopt, 5.0},
      {"long context (split)", 16, 2, 128, 16, {{1, 3000}, {2, 1500}}, std::nullopt, std::nullopt},
      {"window, softcap, head_dim 256", 8, 4, 256, 32, {{1, 700}, {3, 33}}, int64_t{512}, 30.0},
      // Fewer items than two per thread: on the CPU each window is split into stretches (Note
      // [Split contexts] in cpu/paged_attention_cpu.cc).
      {"batch-1 decode, split context", 9, 3, 64, 16, {{1, 700}}, std::nullopt, std::nullopt},
      {"one head, split window, softcap", 4, 1, 128, 16, {{1, 900}}, int64_t{600}, 20.0},
  };
}

// Runs here: the CPU kernel, straight and through a plan, against the float64 reference over the
// matrix the CUDA test below uses — so a CUDA failure there is the kernel's, not the reference's.
// Both loops: the AVX-512 item loop (float32 and bfloat16 at head_dim 32, 64, 128, 256, on this
// CPU) and the generic one (float16, head_dim 80, CPUs without AVX-512).
// On one thread nothing is split; on three, the few-item cases are.
TEST(PagedAttentionKernelTest, CpuMatchesAFloat64ReferenceAcrossDtypesWindowsAndSoftcaps) {
  struct Restore {
    int threads = at::get_num_threads();
    ~Restore() {
      cpu::SetPagedAttentionAvx512ForTesting(true);
      at::set_num_threads(threads);
    }
  } restore;
  const auto check_every_case = [](const std::string& path) {
    for (const PagedCase& paged_case : PagedCases()) {
      for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
        SCOPED_TRACE(testing::Message() << paged_case.name << " " << c10::toString(type) << ", " << path);
        const PagedProblem problem = MakePagedProblem(paged_case, type, 11);
        at::Tensor output = at::zeros_like(problem.query_tokens);
        PagedAttention(problem.query_tokens, problem.key_pool, problem.value_pool, output, problem.tokens,
                       problem.scaling, paged_case.softcap);
        ExpectNearFloat64(output, Float64PagedAttention(problem, paged_case.softcap));
        const PagedAttentionPlan plan = PlanPagedAttention(problem.tokens, paged_case.block_size, at::kCPU);
        at::Tensor planned = at::zeros_like(problem.query_tokens);
        PagedAttentionFromPlan(problem.query_tokens, problem.key_pool, problem.value_pool, planned, plan,
                               problem.scaling, paged_case.softcap);
        EXPECT_TRUE(at::equal(planned, output));
      }
    }
  };
  for (const int threads : {1, 3}) {
    at::set_num_threads(threads);
    for (const bool avx512 : {true, false}) {
      cpu::SetPagedAttentionAvx512ForTesting(avx512);
      check_every_case(std::to_string(threads) + (threads == 1 ? " thread" : " threads") +
                       (avx512 ? "" : ", generic loops"));
    }
  }
}

// The plan packs each sequence's block table once, only as far as its tokens read, and a call
// whose queries or pools are smaller than the plan reads is refused before any kernel runs.
TEST(PagedAttentionKernelTest, APlanPacksEachBlockTableOnceAndIsCheckedAgainstItsTensors) {
  const std::vector<int64_t> table_a = {4, 1, 6, 0}, table_b = {2, 3};
  // Sequence A: three prompt tokens at positions 4..6 (blocks 0 and 1 of 4); B one token at 2.
  const std::vector<PagedAttentionToken> tokens = {
      {0, 4, 0, table_a.data()}, {1, 5, 0, table_a.data()}, {2, 6, 3, table_a.data()}, {3, 2, 0, table_b.data()}};
  const PagedAttentionPlan plan = PlanPagedAttention(tokens, 4, at::kCPU);
  EXPECT_EQ(plan.num_tokens, 4);
  EXPECT_EQ(plan.max_keys, 6);
  EXPECT_EQ(plan.max_token_row, 3);
  EXPECT_EQ(plan.max_block, 4);  // block 6 of table A is past every token's position
  const std::vector<int64_t> expected = {0, 4, 0, 16, 1, 5, 0, 16, 2, 6, 3, 16, 3, 2, 0, 18, 4, 1, 2};
  EXPECT_TRUE(at::equal(plan.packed, at::tensor(expected, at::kLong))) << plan.packed;

  const at::Tensor pool = at::randn({5, 4, 1, 8});
  at::Tensor output = at::empty({4, 2, 8});
  try {
    at::Tensor too_few = at::empty({3, 2, 8});
    PagedAttentionFromPlan(at::randn({3, 2, 8}), pool, pool, too_few, plan, 1.0, std::nullopt);
    FAIL() << "expected an error";
  } catch (const c10::Error& error) {
    EXPECT_NE(std::string(error.what_without_backtrace()).find("reads query row 3"), std::string::npos);
  }
  EXPECT_THROW(PagedAttentionFromPlan(at::randn({4, 2, 8}), pool.narrow(0, 0, 4).contiguous(),
                                      pool.narrow(0, 0, 4).contiguous(), output, plan, 1.0, std::nullopt),
               c10::Error);
  EXPECT_THROW(PagedAttentionFromPlan(at::randn({4, 2, 8}), at::randn({5, 8, 1, 8}), at::randn({5, 8, 1, 8}), output,
                                      plan, 1.0, std::nullopt),
               c10::Error);  // another block size
  const std::vector<int64_t> negative = {-1};
  EXPECT_THROW(PlanPagedAttention({{0, 0, 0, negative.data()}}, 4, at::kCPU), c10::Error);
  EXPECT_THROW(PlanPagedAttention({{0, 2, 3, table_b.data()}}, 4, at::kCPU), c10::Error);  // first key > position
}

// kernels/cuda registers its table when its objects are linked in (no GPU needed to see it): a
// CUDA build whose registration the linker dropped would silently lose every CUDA kernel.
TEST(KernelDispatchTest, CudaKernelsAreRegisteredExactlyWhenBuilt) {
  EXPECT_EQ(HasCudaKernels(), FLOTILLA_TEST_EXPECTS_CUDA_KERNELS == 1);
}

// Where a GPU is: the CUDA paged attention against the CPU kernel and the float64 reference, for
// every case and dtype, through the token list and through a device plan reused by two "layers".
TEST(CudaKernelTest, PagedAttentionMatchesTheCpuKernelAndAFloat64Reference) {
  if (!HasCudaKernels() || !at::hasCUDA()) {
    GTEST_SKIP() << "no CUDA device here: the CUDA kernels are compiled and linked, and run where a GPU is";
  }
  for (const PagedCase& paged_case : PagedCases()) {
    for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(testing::Message() << paged_case.name << " " << c10::toString(type));
      const PagedProblem problem = MakePagedProblem(paged_case, type, 12);
      at::Tensor cpu_output = at::zeros_like(problem.query_tokens);
      PagedAttention(problem.query_tokens, problem.key_pool, problem.value_pool, cpu_output, problem.tokens,
                     problem.scaling, paged_case.softcap);
      const at::Tensor query_cuda = problem.query_tokens.cuda();
      const at::Tensor key_pool_cuda = problem.key_pool.cuda();
      const at::Tensor value_pool_cuda = problem.value_pool.cuda();
      at::Tensor cuda_output = at::zeros_like(query_cuda);
      PagedAttention(query_cuda, key_pool_cuda, value_pool_cuda, cuda_output, problem.tokens, problem.scaling,
                     paged_case.softcap);
      const at::Tensor reference = Float64PagedAttention(problem, paged_case.softcap);
      ExpectNearFloat64(cuda_output.cpu(), reference);
      ExpectWithinKernelTolerance(cuda_output.cpu(), cpu_output);

      const PagedAttentionPlan plan = PlanPagedAttention(problem.tokens, paged_case.block_size, query_cuda.device());
      ASSERT_TRUE(plan.packed.is_cuda());
      for (int layer = 0; layer < 2; ++layer) {
        at::Tensor planned = at::zeros_like(query_cuda);
        PagedAttentionFromPlan(query_cuda, key_pool_cuda, value_pool_cuda, planned, plan, problem.scaling,
                               paged_case.softcap);
        EXPECT_TRUE(at::equal(planned, cuda_output));
      }
    }
  }
  // Mixed devices are refused with the devices named.
  const std::vector<int64_t> table = {0};
  at::Tensor output = at::empty({1, 2, 8}, at::kCUDA);
  EXPECT_THROW(PagedAttention(at::randn({1, 2, 8}, at::kCUDA), at::randn({1, 4, 1, 8}), at::randn({1, 4, 1, 8}),
                              output, {{0, 0, 0, table.data()}}, 1.0, std::nullopt),
               c10::Error);
}

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
      const auto halves = gate_and_up.chunk(2, -1);
      EXPECT_LE(MaxAbsDifference(SiluAndMul(halves[0].cuda(), halves[1].cuda()).cpu(), SiluAndMul(halves[0], halves[1])),
                Tolerance(type) * 4);
      at::Tensor residual = at::randn(shape).to(type);
      at::Tensor residual_cuda = residual.cuda();
      const at::Tensor fused = FusedAddRmsNorm(hidden_states.cuda(), residual_cuda, weight.cuda(), 1e-5).cpu();
      EXPECT_LE(MaxAbsDifference(fused, FusedAddRmsNorm(hidden_states, residual, weight, 1e-5)), Tolerance(type));
      EXPECT_LE(MaxAbsDifference(residual_cuda.cpu(), residual), Tolerance(type));
    }
    if (type != at::kFloat) {
      at::Tensor query = at::randn({2, 3, 5, 8}).to(type);
      at::Tensor key = at::randn({2, 1, 5, 8}).to(type);
      const at::Tensor cos = at::rand({2, 5, 8}).to(type);
      const at::Tensor sin = at::rand({2, 5, 8}).to(type);
      at::Tensor query_cuda = query.cuda();
      at::Tensor key_cuda = key.cuda();
      RotaryEmbeddingInPlace(query, key, cos, sin);
      RotaryEmbeddingInPlace(query_cuda, key_cuda, cos.cuda(), sin.cuda());
      EXPECT_LE(MaxAbsDifference(query_cuda.cpu(), query), Tolerance(type));
      EXPECT_LE(MaxAbsDifference(key_cuda.cpu(), key), Tolerance(type));
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
