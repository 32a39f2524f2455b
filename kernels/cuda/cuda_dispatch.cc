#include "kernels/cuda/cuda_dispatch.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda_kernel_table.h"
#include "kernels/paged_attention_checks.h"

namespace flotilla::kernels::cuda {
namespace {

ElementType ElementTypeOf(const at::Tensor& tensor, const char* operation) {
  switch (tensor.scalar_type()) {
    case at::kFloat: return ElementType::kFloat32;
    case at::kBFloat16: return ElementType::kBFloat16;
    case at::kHalf: return ElementType::kFloat16;
    default: TORCH_CHECK(false, operation, ": dtype ", tensor.scalar_type(), " is not supported (float32, bfloat16, float16)");
  }
}

void CheckLaunch(cudaError_t error, const char* operation) {
  TORCH_CHECK(error == cudaSuccess, operation, ": kernel launch failed: ", cudaGetErrorString(error));
}

}  // namespace

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  const int64_t hidden_size = hidden_states.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == hidden_size, "RmsNorm: weight must be [", hidden_size,
              "] but is ", weight.sizes());
  TORCH_CHECK(weight.device() == hidden_states.device() && weight.scalar_type() == hidden_states.scalar_type(),
              "RmsNorm: weight must share hidden_states' device and dtype");
  const c10::cuda::CUDAGuard device_guard(hidden_states.device());
  const at::Tensor input = hidden_states.contiguous();
  const at::Tensor weight_contiguous = weight.contiguous();
  at::Tensor output = at::empty_like(input);
  const int64_t rows = hidden_size == 0 ? 0 : input.numel() / hidden_size;
  CheckLaunch(LaunchRmsNorm(ElementTypeOf(input, "RmsNorm"), input.data_ptr(), weight_contiguous.data_ptr(),
                            output.data_ptr(), rows, hidden_size, static_cast<float>(epsilon),
                            c10::cuda::getCurrentCUDAStream().stream()),
              "RmsNorm");
  return output;
}

at::Tensor SiluAndMul(const at::Tensor& gate_and_up) {
  TORCH_CHECK(gate_and_up.size(-1) % 2 == 0, "SiluAndMul: the last dimension must be even but is ", gate_and_up.sizes());
  const c10::cuda::CUDAGuard device_guard(gate_and_up.device());
  const at::Tensor input = gate_and_up.contiguous();
  const int64_t width = input.size(-1) / 2;
  std::vector<int64_t> output_shape = input.sizes().vec();
  output_shape.back() = width;
  at::Tensor output = at::empty(output_shape, input.options());
  const int64_t rows = width == 0 ? 0 : input.numel() / (2 * width);
  CheckLaunch(LaunchSiluAndMul(ElementTypeOf(input, "SiluAndMul"), input.data_ptr(), output.data_ptr(), rows, width,
                               c10::cuda::getCurrentCUDAStream().stream()),
              "SiluAndMul");
  return output;
}

at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight,
                           double epsilon) {
  const int64_t hidden_size = hidden_states.size(-1);
  TORCH_CHECK(residual.sizes() == hidden_states.sizes() && residual.is_contiguous() &&
                  residual.scalar_type() == hidden_states.scalar_type() && residual.device() == hidden_states.device(),
              "FusedAddRmsNorm: residual must be a contiguous tensor shaped, typed and placed as hidden_states ",
              hidden_states.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == hidden_size && weight.device() == hidden_states.device() &&
                  weight.scalar_type() == hidden_states.scalar_type(),
              "FusedAddRmsNorm: weight must be [", hidden_size, "] on hidden_states' device and dtype but is ",
              weight.sizes());
  const c10::cuda::CUDAGuard device_guard(hidden_states.device());
  const at::Tensor input = hidden_states.contiguous();
  const at::Tensor weight_contiguous = weight.contiguous();
  at::Tensor output = at::empty_like(input);
  const int64_t rows = hidden_size == 0 ? 0 : input.numel() / hidden_size;
  CheckLaunch(LaunchFusedAddRmsNorm(ElementTypeOf(input, "FusedAddRmsNorm"), input.data_ptr(), residual.data_ptr(),
                                    weight_contiguous.data_ptr(), output.data_ptr(), rows, hidden_size,
                                    static_cast<float>(epsilon), c10::cuda::getCurrentCUDAStream().stream()),
              "FusedAddRmsNorm");
  return output;
}

at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(gate.dim() >= 1 && gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type() &&
                  gate.device() == up.device(),
              "SiluAndMul: gate ", gate.sizes(), " and up ", up.sizes(), " must have one shape, dtype and device");
  const c10::cuda::CUDAGuard device_guard(gate.device());
  const at::Tensor gate_contiguous = gate.contiguous();
  const at::Tensor up_contiguous = up.contiguous();
  at::Tensor output = at::empty_like(gate_contiguous);
  const int64_t width = gate.size(-1);
  const int64_t rows = width == 0 ? 0 : gate.numel() / width;
  CheckLaunch(LaunchSiluAndMulSplit(ElementTypeOf(gate, "SiluAndMul"), gate_contiguous.data_ptr(),
                                    up_contiguous.data_ptr(), output.data_ptr(), rows, width,
                                    c10::cuda::getCurrentCUDAStream().stream()),
              "SiluAndMul");
  return output;
}

void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(cos.dim() == 3 && sin.sizes() == cos.sizes() && cos.size(2) % 2 == 0,
              "RotaryEmbeddingInPlace: cos/sin must be [batch, length, even head_dim] but are ", cos.sizes(), " and ",
              sin.sizes());
  for (const at::Tensor* tensor : {&query, &key}) {
    TORCH_CHECK(tensor->dim() == 4 && tensor->size(0) == cos.size(0) && tensor->size(2) == cos.size(1) &&
                    tensor->size(3) == cos.size(2) && (tensor->size(3) == 0 || tensor->stride(3) == 1) &&
                    tensor->scalar_type() == cos.scalar_type() && tensor->device() == cos.device(),
                "RotaryEmbeddingInPlace: query/key ", tensor->sizes(), " must be [batch, heads, length, head_dim] with a "
                "contiguous last dimension, matching cos ", cos.sizes());
  }
  const c10::cuda::CUDAGuard device_guard(query.device());
  const at::Tensor cos_contiguous = cos.contiguous();
  const at::Tensor sin_contiguous = sin.contiguous();
  RotaryShape shape{cos.size(0), cos.size(1), cos.size(2), query.size(1), key.size(1),
                    {query.stride(0), query.stride(1), query.stride(2)}, {key.stride(0), key.stride(1), key.stride(2)}};
  CheckLaunch(LaunchRotaryInPlace(ElementTypeOf(query, "RotaryEmbeddingInPlace"), query.data_ptr(), key.data_ptr(),
                                  cos_contiguous.data_ptr(), sin_contiguous.data_ptr(), shape,
                                  c10::cuda::getCurrentCUDAStream().stream()),
              "RotaryEmbeddingInPlace");
}

static_assert(kPagedAttentionMaxHeadDim == kCudaPagedAttentionMaxHeadDim,
              "kernels.h must state the CUDA paged attention's head_dim limit models/paged_attention.cc routes by");

void PagedAttention(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                    at::Tensor& output_tokens, const PagedAttentionPlan& plan, double scaling,
                    std::optional<double> softcap) {
  CheckPagedAttentionTensors(query_tokens, key_pool, value_pool, output_tokens);
  TORCH_CHECK(query_tokens.size(2) <= kPagedAttentionMaxHeadDim, "PagedAttention: head_dim ", query_tokens.size(2),
              " is above the CUDA kernel's ", kPagedAttentionMaxHeadDim);
  TORCH_CHECK(plan.packed.scalar_type() == at::kLong && plan.packed.is_contiguous() &&
                  plan.packed.device() == query_tokens.device(),
              "PagedAttention: the plan must be a contiguous int64 tensor on ", query_tokens.device());
  TORCH_CHECK(!softcap.has_value() || *softcap > 0, "PagedAttention: softcap must be positive but is ", *softcap);
  const ElementType type = ElementTypeOf(query_tokens, "PagedAttention");
  if (plan.num_tokens == 0 || query_tokens.size(2) == 0) return;
  const c10::cuda::CUDAGuard device_guard(query_tokens.device());

  PagedAttentionShape shape{};
  shape.num_tokens = plan.num_tokens;
  shape.num_heads = query_tokens.size(1);
  shape.num_key_value_heads = key_pool.size(2);
  shape.head_dim = query_tokens.size(2);
  shape.block_size = key_pool.size(1);
  shape.scaling = static_cast<float>(scaling);
  shape.has_softcap = softcap.has_value();
  shape.softcap = shape.has_softcap ? static_cast<float>(*softcap) : 1.0f;
  const int64_t items = shape.num_tokens * shape.num_key_value_heads;
  TORCH_CHECK(items < (int64_t{1} << 31), "PagedAttention: ", shape.num_tokens, " tokens x ",
              shape.num_key_value_heads, " key/value heads is more thread blocks than one launch holds");

  // Split the context (Note [CUDA paged attention]) when the tokens alone give fewer than about
  // four thread blocks per multiprocessor, keeping at least kMinimumKeysPerSplit keys per split so
  // that the merge stays cheap next to the splits' own reads.
  constexpr int64_t kMinimumKeysPerSplit = 256;
  constexpr int64_t kTile = 32;  // the kernel's kKeysPerTile: splits start on tile boundaries
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  const int64_t wanted_blocks = 4 * static_cast<int64_t>(properties->multiProcessorCount);
  int64_t splits = std::clamp<int64_t>((wanted_blocks + items - 1) / items, 1,
                                       std::max<int64_t>(1, plan.max_keys / kMinimumKeysPerSplit));
  splits = std::min<int64_t>(splits, 65535);
  int64_t keys_per_split = (plan.max_keys + splits - 1) / splits;
  keys_per_split = std::max<int64_t>(kTile, (keys_per_split + kTile - 1) / kTile * kTile);
  shape.keys_per_split = keys_per_split;
  shape.num_splits = (plan.max_keys + keys_per_split - 1) / keys_per_split;
  if (shape.num_splits < 1) shape.num_splits = 1;

  // The kernel's dynamic shared memory, and its static table of a tile's row offsets.
  const int64_t shared_bytes = PagedAttentionSharedBytes(shape) + kTile * static_cast<int64_t>(sizeof(int64_t));
  TORCH_CHECK(shared_bytes <= static_cast<int64_t>(properties->sharedMemPerBlockOptin), "PagedAttention: ",
              shape.num_heads / shape.num_key_value_heads, " query heads per key/value head x head_dim ",
              shape.head_dim, " need ", shared_bytes, " bytes of shared memory per block; this GPU has ",
              properties->sharedMemPerBlockOptin);
  const int64_t workspace_floats = PagedAttentionWorkspaceFloats(shape);
  at::Tensor workspace;
  if (workspace_floats > 0) workspace = at::empty({workspace_floats}, query_tokens.options().dtype(at::kFloat));
  CheckLaunch(LaunchPagedAttention(type, query_tokens.data_ptr(), key_pool.data_ptr(), value_pool.data_ptr(),
                                   output_tokens.data_ptr(), plan.packed.const_data_ptr<int64_t>(),
                                   workspace_floats > 0 ? workspace.mutable_data_ptr<float>() : nullptr, shape,
                                   c10::cuda::getCurrentCUDAStream().stream()),
              "PagedAttention");
}

namespace {

// Dispatch from kernels/kernels.cc (kernels/cuda_kernel_table.h): registered when this file's object
// is linked into a binary or a loaded library.
at::Tensor SiluAndMulFused(const at::Tensor& gate_and_up) { return SiluAndMul(gate_and_up); }
at::Tensor SiluAndMulSplit(const at::Tensor& gate, const at::Tensor& up) { return SiluAndMul(gate, up); }

const CudaKernelTable kCudaKernels{
    .rms_norm = &RmsNorm,
    .fused_add_rms_norm = &FusedAddRmsNorm,
    .silu_and_mul = &SiluAndMulFused,
    .silu_and_mul_split = &SiluAndMulSplit,
    .rotary_embedding_in_place = &RotaryEmbeddingInPlace,
    .paged_attention = &PagedAttention,
};
const bool kRegistered = (RegisterCudaKernels(&kCudaKernels), true);

}  // namespace

}  // namespace flotilla::kernels::cuda
