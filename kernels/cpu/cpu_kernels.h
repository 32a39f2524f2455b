// CPU twins of the CUDA kernels (see kernels/kernels.h for what each computes). Vectorised loops
// (cloned for AVX2+FMA, chosen at load time) over rows split with at::parallel_for.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>

#include "kernels/kernels.h"

namespace flotilla::kernels::cpu {

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon);
at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight,
                           double epsilon);
// The out-of-place form: returns {RmsNorm(residual + hidden_states), residual + hidden_states},
// leaving residual as it was (a decoder layer's input may be held elsewhere: output_hidden_states).
std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& hidden_states, const at::Tensor& residual,
                                             const at::Tensor& weight, double epsilon);
at::Tensor SiluAndMul(const at::Tensor& gate_and_up);
at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up);
void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin);
// For tests: enabled = false sends float32 and bfloat16 through the chunked loops that CPUs without
// AVX-512 run (Note [Register-resident rows] in cpu_kernels.cc), and bfloat16_instructions = false
// makes the AVX-512 rows round bfloat16 with integer instructions as CPUs without AVX512-BF16 do,
// so that those paths stay tested on CPUs with both; (true, true), the default, restores what the
// CPU has. Calls already running may take either path.
void SetAvx512RowsForTesting(bool enabled, bool bfloat16_instructions = true);
// Whether the CPU kernels use AVX512-BF16's instructions: the CPU has them and
// SetAvx512RowsForTesting has not turned them (or the AVX-512 rows) off. For the kernels' own files.
bool UseBFloat16DotProducts();

void PagedAttention(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                    at::Tensor& output_tokens, const std::vector<PagedAttentionToken>& tokens, double scaling,
                    std::optional<double> softcap);
// For tests: enabled = false sends float32 and bfloat16 paged attention through the loops that
// CPUs without AVX-512 (and other head sizes and dtypes) run (Note [Paged attention in registers]
// in paged_attention_cpu.cc); true, the default, restores what the CPU has.
void SetPagedAttentionAvx512ForTesting(bool enabled);

// Decode-sized linear: input [..., in] with at most 2 rows, weight [out, in] contiguous, float32
// (or bfloat16 input with bfloat16 weight), bias [out] or undefined. Each output is a float32 dot
// product in a fixed order (independent of the thread count), rounded once to the input dtype, as
// a float32-accumulating GEMM rounds. Parallel over output features.
bool SkinnyLinearApplies(const at::Tensor& input, const at::Tensor& weight);
at::Tensor SkinnyLinear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias);
// Several such products of one input in one parallel pass (the sibling projections q/k/v or
// gate/up: models/layers.h), each output exactly what SkinnyLinear would return for its weight.
// `biases` is empty or one (possibly undefined) bias per weight.
// Prefill-sized float32 linear (any row count) through oneDNN's AVX-512 GEMM rather than ATen's
// MKL sgemm, which runs AVX2 kernels on AMD CPUs (Note [Prefill linear through oneDNN]). Applies
// when oneDNN is in this libtorch.
bool PrefillLinearApplies(const at::Tensor& input, const at::Tensor& weight);
at::Tensor PrefillLinear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias);
std::vector<at::Tensor> SkinnyLinearGroup(const at::Tensor& input, const std::vector<at::Tensor>& weights,
                                          const std::vector<at::Tensor>& biases);

}  // namespace flotilla::kernels::cpu
