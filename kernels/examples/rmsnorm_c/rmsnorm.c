/* An example third-party hub kernel: RMSNorm and SiluAndMul for CPU tensors in float32 and
 * bfloat16, written in plain C11 against kernels/abi/flotilla_kernel_abi.h alone (no LibTorch, no
 * Flotilla code). tools/kernels/build_kernel.py turns this folder into a kernel repository; see
 * kernels/ABI.md. Single-threaded on purpose: it shows the contract, not the fastest loop.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "flotilla_kernel_abi.h"

#define EXPORT __attribute__((visibility("default")))

static float bfloat16_to_float(uint16_t bits) {
  uint32_t widened = (uint32_t)bits << 16;
  float value;
  memcpy(&value, &widened, sizeof value);
  return value;
}

/* Round to nearest even, as the worker's own bfloat16 does. */
static uint16_t float_to_bfloat16(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  if (value != value) return 0x7FC0u;
  return (uint16_t)((bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16);
}

static float load(const flotilla_tensor* tensor, int64_t offset) {
  if (tensor->dtype == FLOTILLA_DTYPE_FLOAT32) return ((const float*)tensor->data)[offset];
  return bfloat16_to_float(((const uint16_t*)tensor->data)[offset]);
}

static void store(flotilla_tensor* tensor, int64_t offset, float value) {
  if (tensor->dtype == FLOTILLA_DTYPE_FLOAT32) {
    ((float*)tensor->data)[offset] = value;
  } else {
    ((uint16_t*)tensor->data)[offset] = float_to_bfloat16(value);
  }
}

static float round_to_dtype(int32_t dtype, float value) {
  return dtype == FLOTILLA_DTYPE_FLOAT32 ? value : bfloat16_to_float(float_to_bfloat16(value));
}

static int32_t fail(flotilla_kernel_error* error, int32_t code, const char* message) {
  snprintf(error->message, sizeof error->message, "%s", message);
  return code;
}

static int supported(const flotilla_tensor* tensor) {
  return tensor->device_type == FLOTILLA_DEVICE_CPU &&
         (tensor->dtype == FLOTILLA_DTYPE_FLOAT32 || tensor->dtype == FLOTILLA_DTYPE_BFLOAT16) && tensor->ndim >= 1;
}

/* Offset of row `row` (rows numbered over every dimension but the last, row-major). */
static int64_t row_offset(const flotilla_tensor* tensor, int64_t row) {
  int64_t offset = 0;
  for (int32_t dim = tensor->ndim - 2; dim >= 0; --dim) {
    offset += (row % tensor->sizes[dim]) * tensor->strides[dim];
    row /= tensor->sizes[dim];
  }
  return offset;
}

static int64_t rows_of(const flotilla_tensor* tensor) {
  int64_t rows = 1;
  for (int32_t dim = 0; dim + 1 < tensor->ndim; ++dim) rows *= tensor->sizes[dim];
  return rows;
}

EXPORT uint32_t flotilla_kernel_abi_version(void) { return FLOTILLA_KERNEL_ABI_VERSION; }

EXPORT int32_t flotilla_rms_norm(const flotilla_tensor* hidden_states, const flotilla_tensor* weight, double epsilon,
                                 flotilla_tensor* output, flotilla_kernel_error* error) {
  if (!supported(hidden_states) || !supported(weight) || !supported(output)) {
    return fail(error, FLOTILLA_KERNEL_UNSUPPORTED, "rmsnorm_c flotilla_rms_norm: CPU float32 or bfloat16 only");
  }
  const int64_t hidden = hidden_states->sizes[hidden_states->ndim - 1];
  if (weight->ndim != 1 || weight->sizes[0] != hidden || weight->dtype != hidden_states->dtype ||
      output->dtype != hidden_states->dtype || output->ndim != hidden_states->ndim) {
    return fail(error, FLOTILLA_KERNEL_INVALID,
                "rmsnorm_c flotilla_rms_norm: weight must be [hidden] and output shaped as hidden_states, one dtype");
  }
  const int64_t rows = rows_of(hidden_states);
  for (int64_t row = 0; row < rows && hidden > 0; ++row) {
    const int64_t in = row_offset(hidden_states, row);
    const int64_t out = row_offset(output, row);
    const int64_t in_step = hidden_states->strides[hidden_states->ndim - 1];
    const int64_t out_step = output->strides[output->ndim - 1];
    double sum_of_squares = 0.0;
    for (int64_t i = 0; i < hidden; ++i) {
      const float value = load(hidden_states, in + i * in_step);
      sum_of_squares += (double)value * value;
    }
    const float inverse_rms = 1.0f / sqrtf((float)(sum_of_squares / (double)hidden) + (float)epsilon);
    for (int64_t i = 0; i < hidden; ++i) {
      const float normalized = round_to_dtype(hidden_states->dtype, load(hidden_states, in + i * in_step) * inverse_rms);
      store(output, out + i * out_step, load(weight, i * weight->strides[0]) * normalized);
    }
  }
  return FLOTILLA_KERNEL_OK;
}

EXPORT int32_t flotilla_silu_and_mul(const flotilla_tensor* gate, const flotilla_tensor* up, flotilla_tensor* output,
                                     flotilla_kernel_error* error) {
  if (!supported(gate) || !supported(up) || !supported(output)) {
    return fail(error, FLOTILLA_KERNEL_UNSUPPORTED, "rmsnorm_c flotilla_silu_and_mul: CPU float32 or bfloat16 only");
  }
  if (gate->ndim != up->ndim || gate->ndim != output->ndim || gate->dtype != up->dtype || gate->dtype != output->dtype) {
    return fail(error, FLOTILLA_KERNEL_INVALID, "rmsnorm_c flotilla_silu_and_mul: gate, up and output differ");
  }
  const int64_t width = gate->sizes[gate->ndim - 1];
  const int64_t rows = rows_of(gate);
  for (int64_t row = 0; row < rows && width > 0; ++row) {
    const int64_t gate_row = row_offset(gate, row), up_row = row_offset(up, row), out_row = row_offset(output, row);
    for (int64_t i = 0; i < width; ++i) {
      const float g = load(gate, gate_row + i * gate->strides[gate->ndim - 1]);
      const float activated = round_to_dtype(gate->dtype, g / (1.0f + expf(-g)));
      store(output, out_row + i * output->strides[output->ndim - 1],
            activated * load(up, up_row + i * up->strides[up->ndim - 1]));
    }
  }
  return FLOTILLA_KERNEL_OK;
}
