/* The plain-C ABI a hub kernel implements, so a kernel built elsewhere (another compiler, another
 * C++ standard library, no LibTorch at all) loads into a Flotilla worker with dlopen. Only plain
 * pointers, integers and this header's structs cross it. kernels/ABI.md is the guide for authors.
 *
 *   #include "flotilla_kernel_abi.h"
 *   uint32_t flotilla_kernel_abi_version(void) { return FLOTILLA_KERNEL_ABI_VERSION; }
 *   int32_t flotilla_rms_norm(const flotilla_tensor* hidden_states, const flotilla_tensor* weight,
 *                             double epsilon, flotilla_tensor* output, flotilla_kernel_error* error) {
 *     ... read hidden_states->data by its sizes/strides, write output->data ...
 *     return FLOTILLA_KERNEL_OK;
 *   }
 *
 * Thread-safety: the worker may call a library's functions from several threads at once (one
 * forward per thread); a kernel keeps no mutable global state, or guards it. A kernel may run its
 * own threads inside a call but must have joined them before it returns.
 *
 * Versioning: FLOTILLA_KERNEL_ABI_VERSION changes whenever a struct's layout or a function's
 * signature or meaning changes; a worker loads only a library whose flotilla_kernel_abi_version()
 * equals its own. Adding a new optional function does not change the version.
 */
#ifndef FLOTILLA_KERNEL_ABI_H_
#define FLOTILLA_KERNEL_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FLOTILLA_KERNEL_ABI_VERSION 1u

/* Element types. bfloat16 and float16 are stored as uint16_t bit patterns. */
typedef enum flotilla_dtype {
  FLOTILLA_DTYPE_FLOAT32 = 0,
  FLOTILLA_DTYPE_BFLOAT16 = 1,
  FLOTILLA_DTYPE_FLOAT16 = 2
} flotilla_dtype;

typedef enum flotilla_device_type { FLOTILLA_DEVICE_CPU = 0, FLOTILLA_DEVICE_CUDA = 1 } flotilla_device_type;

#define FLOTILLA_TENSOR_MAX_DIMS 8

/* A view of a tensor the worker owns: data points at element [0, 0, ...]; element (i0, i1, ...)
 * is at data + sum(i_k * strides[k]) elements. sizes may contain 0 (an empty tensor: data may then
 * be anything and nothing may be read). The kernel never frees or keeps these pointers. */
typedef struct flotilla_tensor {
  void* data;
  int32_t dtype;       /* flotilla_dtype */
  int32_t device_type; /* flotilla_device_type */
  int32_t device_index;
  int32_t ndim; /* 0 .. FLOTILLA_TENSOR_MAX_DIMS */
  int64_t sizes[FLOTILLA_TENSOR_MAX_DIMS];
  int64_t strides[FLOTILLA_TENSOR_MAX_DIMS]; /* in elements, not bytes */
  void* cuda_stream; /* CUDA tensors: the stream to launch on (cudaStream_t); NULL on CPU */
} flotilla_tensor;

/* Return codes. On anything but FLOTILLA_KERNEL_OK the kernel writes a NUL-terminated message
 * naming the operation, the operand and expected vs actual into error->message. */
#define FLOTILLA_KERNEL_OK 0
#define FLOTILLA_KERNEL_UNSUPPORTED 1 /* a dtype, device or layout this kernel does not take */
#define FLOTILLA_KERNEL_INVALID 2     /* shapes that do not fit together */
#define FLOTILLA_KERNEL_FAILED 3      /* anything else (a CUDA launch error, ...) */

#define FLOTILLA_KERNEL_ERROR_SIZE 512
typedef struct flotilla_kernel_error {
  char message[FLOTILLA_KERNEL_ERROR_SIZE];
} flotilla_kernel_error;

/* Required: the ABI version the library was built against (FLOTILLA_KERNEL_ABI_VERSION). */
uint32_t flotilla_kernel_abi_version(void);

/* Optional, one per layer name a kernel provides (kernel.json's "layers" lists which). The worker
 * resolves each listed one with dlsym; a listed but missing symbol refuses the library. */

/* "RMSNorm": output = weight * round_to_dtype(x * 1/sqrt(mean(x^2 over the last dim) + epsilon)),
 * the mean in float32. hidden_states, output [..., hidden] (output contiguous, same shape and
 * dtype); weight [hidden], same dtype. */
typedef int32_t (*flotilla_rms_norm_fn)(const flotilla_tensor* hidden_states, const flotilla_tensor* weight,
                                       double epsilon, flotilla_tensor* output, flotilla_kernel_error* error);
int32_t flotilla_rms_norm(const flotilla_tensor* hidden_states, const flotilla_tensor* weight, double epsilon,
                          flotilla_tensor* output, flotilla_kernel_error* error);

/* "SiluAndMul": output = round_to_dtype(silu(gate)) * up, elementwise. gate, up, output: one shape
 * and dtype, output contiguous. */
typedef int32_t (*flotilla_silu_and_mul_fn)(const flotilla_tensor* gate, const flotilla_tensor* up,
                                           flotilla_tensor* output, flotilla_kernel_error* error);
int32_t flotilla_silu_and_mul(const flotilla_tensor* gate, const flotilla_tensor* up, flotilla_tensor* output,
                              flotilla_kernel_error* error);

/* "RotaryEmbedding", in place: q = q * cos + rotate_half(q) * sin for q in {query, key}, where
 * rotate_half(x) = cat(-x[d/2:], x[:d/2]) over the last dim. query [batch, heads, length, d], key
 * [batch, kv_heads, length, d] (strided; the last dim contiguous); cos, sin [batch, length, d]. */
typedef int32_t (*flotilla_rotary_embedding_fn)(flotilla_tensor* query, flotilla_tensor* key,
                                                const flotilla_tensor* cos, const flotilla_tensor* sin,
                                                flotilla_kernel_error* error);
int32_t flotilla_rotary_embedding(flotilla_tensor* query, flotilla_tensor* key, const flotilla_tensor* cos,
                                  const flotilla_tensor* sin, flotilla_kernel_error* error);

#ifdef __cplusplus
}
#endif

#endif /* FLOTILLA_KERNEL_ABI_H_ */
