#include "kernels/cpu/cpu_kernels.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

namespace flotilla::kernels::cpu {

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  TORCH_CHECK(hidden_states.dim() >= 1, "RmsNorm: hidden_states must have at least one dimension");
  const int64_t hidden_size = hidden_states.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == hidden_size, "RmsNorm: weight must be [", hidden_size,
              "] but is ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == hidden_states.scalar_type(), "RmsNorm: weight dtype ", weight.scalar_type(),
              " differs from hidden_states dtype ", hidden_states.scalar_type());
  const at::Tensor input = hidden_states.contiguous();
  const at::Tensor weight_contiguous = weight.contiguous();
  at::Tensor output = at::empty_like(input);
  const int64_t rows = hidden_size == 0 ? 0 : input.numel() / hidden_size;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "RmsNorm", [&] {
    const scalar_t* input_data = input.data_ptr<scalar_t>();
    const scalar_t* weight_data = weight_contiguous.data_ptr<scalar_t>();
    scalar_t* output_data = output.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* x = input_data + row * hidden_size;
        scalar_t* y = output_data + row * hidden_size;
        float sum_of_squares = 0.f;
        for (int64_t i = 0; i < hidden_size; ++i) {
          const float value = static_cast<float>(x[i]);
          sum_of_squares += value * value;
        }
        const float inverse_rms = 1.f / std::sqrt(sum_of_squares / hidden_size + static_cast<float>(epsilon));
        for (int64_t i = 0; i < hidden_size; ++i) {
          // Round to the input dtype before the weight multiply, as the eager module does.
          const scalar_t normalized = static_cast<scalar_t>(static_cast<float>(x[i]) * inverse_rms);
          y[i] = static_cast<scalar_t>(static_cast<float>(weight_data[i]) * static_cast<float>(normalized));
        }
      }
    });
  });
  return output;
}

at::Tensor SiluAndMul(const at::Tensor& gate_and_up) {
  TORCH_CHECK(gate_and_up.dim() >= 1 && gate_and_up.size(-1) % 2 == 0,
              "SiluAndMul: the last dimension must be even (gate and up halves) but is ", gate_and_up.sizes());
  const int64_t width = gate_and_up.size(-1) / 2;
  const at::Tensor input = gate_and_up.contiguous();
  std::vector<int64_t> output_shape = input.sizes().vec();
  output_shape.back() = width;
  at::Tensor output = at::empty(output_shape, input.options());
  const int64_t rows = width == 0 ? 0 : input.numel() / (2 * width);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "SiluAndMul", [&] {
    const scalar_t* input_data = input.data_ptr<scalar_t>();
    scalar_t* output_data = output.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* gate = input_data + row * 2 * width;
        const scalar_t* up = gate + width;
        scalar_t* y = output_data + row * width;
        for (int64_t i = 0; i < width; ++i) {
          const float g = static_cast<float>(gate[i]);
          // silu rounds to the input dtype before the multiply, as F.silu(gate) * up does.
          const scalar_t activated = static_cast<scalar_t>(g / (1.f + std::exp(-g)));
          y[i] = static_cast<scalar_t>(static_cast<float>(activated) * static_cast<float>(up[i]));
        }
      }
    });
  });
  return output;
}

}  // namespace flotilla::kernels::cpu
