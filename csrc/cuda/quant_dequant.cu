// Quantize and dequantize on the GPU: int8 (per row), nf4 (bitsandbytes blocks), int4 (groups
// of 32). Same bytes and same float arithmetic as csrc/cpu/quant_{int8,nf4,int4}.cpp, so a weight
// quantized here equals one quantized on the CPU (and ops.ref_quantize_*) bit for bit.
#include <string>

#include "cuda/ops_cuda.h"
#include "cuda/quant_decode.cuh"

namespace mpt::cuda {
namespace {

constexpr int kThreads = 256;

// One warp per row: absmax, then q = rint(w * (127 / absmax)) clamped to [-127, 127].
__global__ void quantize_int8_kernel(const float* __restrict__ w, int64_t N, int64_t K, int8_t* __restrict__ cb,
                                     float* __restrict__ scb) {
  const int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;
  const float* row = w + n * K;
  float amax = 0.f;
  for (int64_t k = lane; k < K; k += 32) amax = fmaxf(amax, fabsf(row[k]));
  amax = warp_max(amax);
  if (lane == 0) scb[n] = amax;
  const float inv = amax > 0.f ? 127.0f / amax : 0.f;
  for (int64_t k = lane; k < K; k += 32) {
    const float q = rintf(__fmul_rn(row[k], inv));
    cb[n * K + k] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, q)));
  }
}

// Nearest NF4 code by counting the midpoints below v (as quant_nf4.cpp and ref_quantize_nf4).
__device__ __forceinline__ uint8_t nf4_code_of(float v) {
  int q = 0;
#pragma unroll
  for (int i = 0; i < 15; ++i) q += v > __fmul_rn(0.5f, __fadd_rn(nf4_value(i), nf4_value(i + 1)));
  return static_cast<uint8_t>(q);
}

// One warp per block of `bs` flat elements (bs even: no byte is shared by two blocks).
__global__ void quantize_nf4_kernel(const float* __restrict__ w, int64_t numel, int64_t bs,
                                    uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  const int64_t b = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t nblocks = (numel + bs - 1) / bs;
  if (b >= nblocks) return;
  const int64_t f0 = b * bs, f1 = min(numel, f0 + bs);
  float amax = 0.f;
  for (int64_t f = f0 + lane; f < f1; f += 32) amax = fmaxf(amax, fabsf(w[f]));
  amax = warp_max(amax);
  if (lane == 0) absmax[b] = amax;
  for (int64_t f = f0 + 2 * lane; f < f1; f += 64) {
    const float v0 = amax > 0.f ? w[f] / amax : 0.f;
    const float v1 = amax > 0.f && f + 1 < f1 ? w[f + 1] / amax : 0.f;
    const uint8_t lo = f + 1 < f1 ? nf4_code_of(v1) : 0;
    packed[f >> 1] = static_cast<uint8_t>(nf4_code_of(v0) << 4 | lo);
  }
}

// One thread per (row, group): the sequential scan keeps "first of equal magnitudes wins".
__global__ void quantize_int4_kernel(const float* __restrict__ w, int64_t N, int64_t K, uint8_t* __restrict__ packed,
                                     unsigned short* __restrict__ scales) {
  const int64_t G = (K + kInt4Group - 1) / kInt4Group;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * G) return;
  const int64_t n = i / G, g = i % G;
  float v[kInt4Group];
  float amax = 0.f, maxv = 0.f;
#pragma unroll
  for (int j = 0; j < kInt4Group; ++j) {
    const int64_t k = g * kInt4Group + j;
    v[j] = k < K ? w[n * K + k] : 0.f;
    if (fabsf(v[j]) > amax) {
      amax = fabsf(v[j]);
      maxv = v[j];
    }
  }
  // the stored half scale (clamped to +-65504, rounded to nearest even, as half_bits on the CPU);
  // the codes use the rounded value
  const __half h = __float2half_rn(fminf(fmaxf(maxv / -8.0f, -65504.f), 65504.f));
  const float d = __half2float(h);
  const float id = d != 0.f ? 1.0f / d : 0.f;
  scales[i] = __half_as_ushort(h);
  uint8_t* out = packed + i * 16;
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    auto q = [&](float x) {
      const float t = floorf(__fadd_rn(__fmul_rn(x, id), 8.5f));
      return static_cast<uint8_t>(fminf(15.f, fmaxf(0.f, t)));
    };
    out[j] = static_cast<uint8_t>(q(v[j]) | q(v[j + 16]) << 4);
  }
}

template <Fmt F>
__global__ void dequantize_kernel(QW w, const int64_t* __restrict__ rows, int64_t nrows, float* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nrows * w.K) return;
  const int64_t r = i / w.K, k = i % w.K;
  const int64_t n = rows ? rows[r] : r;
  out[i] = dequant<F>(w, n, k);
}

// Rows [row0, row0 + nrows) of W's matmul operand as bfloat16 (int8: the codes, exact in bf16;
// nf4 / int4: the dequantized value, float32 as dequant<F> computes it, rounded to nearest even):
// the B operand of the cuBLAS prefill path (ops.ref_matmul_bf16_operands).
// Fast path (K % 32 == 0, aligned codes): a thread per 32-element chunk, one 16-byte code load and
// one scale, four 16-byte stores; 64-bit index arithmetic once per chunk, not per element.
template <Fmt F>
__global__ void operand_bf16_chunks_kernel(QW w, int64_t row0, int64_t nrows, __nv_bfloat16* __restrict__ out) {
  // Each thread decodes one chunk into shared memory; the warp then writes its 32 chunks' bytes
  // (2 KB, one contiguous run of the slab: rows are whole chunks) with consecutive lanes on consecutive
  // 16 bytes, so every store instruction writes whole sectors.
  __shared__ float tbl[16];
  constexpr int kPitch = 5;  // uint4 per chunk in the stage: 4 + 1 of padding (conflict-free 16-byte stores)
  __shared__ uint4 stage[kThreads / 32][32 * kPitch];
  if constexpr (F == Fmt::Nf4) {
    if (threadIdx.x < 16) tbl[threadIdx.x] = nf4_value(threadIdx.x);
    __syncthreads();
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t chunks = w.K / 32, total = nrows * chunks;
  const int64_t first = (int64_t(blockIdx.x) * blockDim.x + warp * 32), i = first + lane;
  if (first >= total) return;
  if (i < total) {
    const int64_t r = i / chunks, c = i - r * chunks;
    ChunkCodes<F> codes;
    load_chunk<F>(w, row0 + r, c, codes);
#pragma unroll
    for (int h = 0; h < 4; ++h) {  // elements 8h .. 8h+7
      __align__(16) __nv_bfloat16 v[8];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float o[4];
        decode4<F>(codes.words, 2 * h + half, tbl, o);
#pragma unroll
        for (int e = 0; e < 4; ++e)
          v[4 * half + e] = __float2bfloat16_rn(F == Fmt::Int8 ? o[e] : __fmul_rn(o[e], codes.scale));
      }
      stage[warp][lane * kPitch + h] = *reinterpret_cast<const uint4*>(v);
    }
  }
  __syncwarp();
  // chunk first + j goes to out + (first + j) * 32 (rows are whole chunks): the warp's chunks are
  // one contiguous run, written with consecutive lanes on consecutive 16 bytes
  const int n = total - first < 32 ? static_cast<int>(total - first) : 32;
  uint4* dst = reinterpret_cast<uint4*>(out + first * 32);
  for (int u = lane; u < 4 * n; u += 32) dst[u] = stage[warp][(u / 4) * kPitch + u % 4];
}

// Any shape: a thread per element.
template <Fmt F>
__global__ void operand_bf16_kernel(QW w, int64_t row0, int64_t nrows, __nv_bfloat16* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nrows * w.K) return;
  out[i] = __float2bfloat16_rn(operand<F>(w, row0 + i / w.K, i % w.K));
}

template <Fmt F>
void launch_operand_bf16(cudaStream_t st, const QW& w, int64_t row0, int64_t nrows, __nv_bfloat16* out) {
  bool fast = w.K % 32 == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if constexpr (F == Fmt::Nf4) fast = fast && w.blocksize % 32 == 0;
  if (fast) {
    operand_bf16_chunks_kernel<F><<<grid_1d(nrows * (w.K / 32), kThreads, "operand_bf16"), kThreads, 0, st>>>(
        w, row0, nrows, out);
  } else {
    operand_bf16_kernel<F><<<grid_1d(nrows * w.K, kThreads, "operand_bf16"), kThreads, 0, st>>>(w, row0, nrows, out);
  }
  check_launch("operand_bf16_kernel");
}

void check_fmt(int fmt) {
  if (fmt < 0 || fmt > 2) throw std::invalid_argument("unknown weight format code " + std::to_string(fmt));
}

template <Fmt F>
void launch_dequant(cudaStream_t st, const QW& w, const int64_t* rows, int64_t nrows, float* out) {
  if (nrows * w.K == 0) return;
  dequantize_kernel<F><<<grid_1d(nrows * w.K, kThreads, "dequantize"), kThreads, 0, st>>>(w, rows, nrows, out);
  check_launch("dequantize_kernel");
}

void dequant_any(cudaStream_t st, int fmt, const QW& w, const int64_t* rows, int64_t nrows, float* out) {
  check_fmt(fmt);
  if (fmt == 0) launch_dequant<Fmt::Int8>(st, w, rows, nrows, out);
  else if (fmt == 1) launch_dequant<Fmt::Nf4>(st, w, rows, nrows, out);
  else launch_dequant<Fmt::Int4>(st, w, rows, nrows, out);
}

}  // namespace

void quantize_int8(Launch l, const float* w, int64_t N, int64_t K, int8_t* cb, float* scb) {
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  if (N == 0) return;
  quantize_int8_kernel<<<grid_1d(N * 32, kThreads, "quantize_int8"), kThreads, 0, st>>>(w, N, K, cb, scb);
  check_launch("quantize_int8_kernel");
}

void quantize_nf4(Launch l, const float* w, int64_t numel, int64_t bs, uint8_t* packed, float* absmax) {
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  if (bs < 2 || bs % 2) throw std::invalid_argument("blocksize must be an even int >= 2");
  if (numel == 0) return;
  const int64_t nblocks = (numel + bs - 1) / bs;
  quantize_nf4_kernel<<<grid_1d(nblocks * 32, kThreads, "quantize_nf4"), kThreads, 0, st>>>(w, numel, bs, packed,
                                                                                              absmax);
  check_launch("quantize_nf4_kernel");
}

void quantize_int4(Launch l, const float* w, int64_t N, int64_t K, uint8_t* packed, uint16_t* scales) {
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  const int64_t G = (K + kInt4Group - 1) / kInt4Group;
  if (N * G == 0) return;
  quantize_int4_kernel<<<grid_1d(N * G, 128, "quantize_int4"), 128, 0, st>>>(w, N, K, packed, scales);
  check_launch("quantize_int4_kernel");
}

void dequantize(Launch l, int fmt, const void* data, const void* scale, int64_t N, int64_t K, int64_t bs,
                float* out) {
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  dequant_any(st, fmt, QW{static_cast<const uint8_t*>(data), scale, N, K, bs}, nullptr, N, out);
}

void dequantize_rows(Launch l, int fmt, const void* data, const void* scale, int64_t N, int64_t K, int64_t bs,
                     const int64_t* rows, int64_t nrows, float* out) {
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  dequant_any(st, fmt, QW{static_cast<const uint8_t*>(data), scale, N, K, bs}, rows, nrows, out);
}

void operand_bf16(Launch l, int fmt, const void* data, const void* scale, int64_t N, int64_t K, int64_t bs,
                  int64_t row0, int64_t nrows, uint16_t* out) {
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  check_fmt(fmt);
  if (row0 < 0 || nrows < 0 || row0 + nrows > N) throw std::invalid_argument("operand_bf16: rows outside the weight");
  if (nrows * K == 0) return;
  const QW w{static_cast<const uint8_t*>(data), scale, N, K, bs};
  auto* o = reinterpret_cast<__nv_bfloat16*>(out);
  if (fmt == 0) launch_operand_bf16<Fmt::Int8>(st, w, row0, nrows, o);
  else if (fmt == 1) launch_operand_bf16<Fmt::Nf4>(st, w, row0, nrows, o);
  else launch_operand_bf16<Fmt::Int4>(st, w, row0, nrows, o);
}

}  // namespace mpt::cuda
