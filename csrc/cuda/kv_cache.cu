// KV cache write by slot mapping (vLLM's reshape_and_cache): token t's K/V rows go to slot
// slot_mapping[t] (block * block_size + offset); a negative slot skips the token. Same values
// as csrc/cpu/attention_kernel.h and ops.ref_write_kv_cache: fp32 copy, bf16/fp16 round to
// nearest even, int8 round(x / s) with s = absmax / 127 per token and head (s = 0, codes 0 for
// an all-zero row).
#include "cuda/ops_cuda.h"
#include "cuda/cuda_common.cuh"

namespace mpt::cuda {
namespace {

constexpr int kThreads = 128;

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

// One thread block per token; both K and V.
template <typename T>
__global__ void write_kv_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                const int64_t* __restrict__ slots, T* __restrict__ kc, T* __restrict__ vc, int row) {
  const int64_t t = blockIdx.x, slot = slots[t];
  if (slot < 0) return;
  for (int i = threadIdx.x; i < row; i += blockDim.x) {
    kc[slot * row + i] = from_f32<T>(k[t * row + i]);
    vc[slot * row + i] = from_f32<T>(v[t * row + i]);
  }
}

// int8: one warp per (token, head, K or V).
__global__ void write_kv_i8_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                   const int64_t* __restrict__ slots, int8_t* __restrict__ kc,
                                   int8_t* __restrict__ vc, float* __restrict__ ks, float* __restrict__ vs, int KV,
                                   int D) {
  const int64_t t = blockIdx.x, slot = slots[t];
  if (slot < 0) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  for (int job = warp; job < 2 * KV; job += nwarps) {
    const int pass = job / KV, h = job % KV;
    const float* src = (pass ? v : k) + (t * KV + h) * D;
    int8_t* dst = (pass ? vc : kc) + (slot * KV + h) * D;
    float amax = 0.f;
    for (int d = lane; d < D; d += 32) amax = fmaxf(amax, fabsf(src[d]));
    const float s = warp_max(amax) / 127.0f;
    if (lane == 0) (pass ? vs : ks)[slot * KV + h] = s;
    for (int d = lane; d < D; d += 32) {
      const float q = s > 0.f ? rintf(src[d] / s) : 0.f;
      dst[d] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, q)));
    }
  }
}

}  // namespace

void write_kv_cache(Launch l, const float* k, const float* v, int64_t n_tokens, const int64_t* slots,
                    const int64_t* slots_host, const KvCacheView& c) {
  check_kv_slots(slots_host, n_tokens, c);  // the CPU kernels' checks and messages
  require_gpu_kv_dtype(c);
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  if (n_tokens == 0) return;
  if (n_tokens > 0x7fffffffLL) throw std::invalid_argument("write_kv_cache: too many tokens for one launch");
  const unsigned grid = static_cast<unsigned>(n_tokens);
  const int row = c.kv_heads * c.head_dim;
  switch (c.dtype) {
    case KvDtype::F32:
      write_kv_kernel<float><<<grid, kThreads, 0, st>>>(k, v, slots, static_cast<float*>(c.k), static_cast<float*>(c.v), row);
      break;
    case KvDtype::BF16:
      write_kv_kernel<__nv_bfloat16><<<grid, kThreads, 0, st>>>(k, v, slots, static_cast<__nv_bfloat16*>(c.k),
                                                                static_cast<__nv_bfloat16*>(c.v), row);
      break;
    case KvDtype::F16:
      write_kv_kernel<__half><<<grid, kThreads, 0, st>>>(k, v, slots, static_cast<__half*>(c.k), static_cast<__half*>(c.v), row);
      break;
    case KvDtype::I8:
      write_kv_i8_kernel<<<grid, kThreads, 0, st>>>(k, v, slots, static_cast<int8_t*>(c.k), static_cast<int8_t*>(c.v),
                                                    c.k_scale, c.v_scale, c.kv_heads, c.head_dim);
      break;
    case KvDtype::Q4: break;  // refused above (require_gpu_kv_dtype)
  }
  check_launch("write_kv_kernel");
}

}  // namespace mpt::cuda
