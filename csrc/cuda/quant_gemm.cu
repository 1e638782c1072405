// Quantized GEMM for larger M (prefill): 64 x 64 output tiles, K in steps of 32. Each step loads
// the x tile (float32 -> bfloat16) and dequantizes the weight tile straight into shared memory
// (bfloat16; int8 keeps the raw code, exact in bfloat16, and applies scb/127 after the sum),
// then 4 warps run bf16 tensor-core MMAs (WMMA 16x16x16, sm_80+) accumulating in float32.
// Result: ops.ref_matmul_bf16_operands of the same operands, to float32 rounding.
#include <mma.h>

#include "cuda/ops_cuda.h"
#include "cuda/quant_decode.cuh"

namespace mpt::cuda {

namespace wmma = nvcuda::wmma;

constexpr int BM = 64, BN = 64, BK = 32, LDS = BK + 8, LDC = BN + 4, kGemmThreads = 128;

template <Fmt F, bool VEC>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_kernel(QW w, const float* __restrict__ x, int64_t M, const float* __restrict__ bias, float* __restrict__ y) {
  __shared__ __align__(32) __nv_bfloat16 As[BM * LDS];
  __shared__ __align__(32) __nv_bfloat16 Bs[BN * LDS];
  __shared__ __align__(32) float Cs[BM * LDC];
  const int t = threadIdx.x, warp = t / 32;
  const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN, K = w.K, N = w.N;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    // x tile: consecutive threads read consecutive k (coalesced); zeros outside [M, K).
#pragma unroll
    for (int i = 0; i < BM * BK / kGemmThreads; ++i) {
      const int idx = t + i * kGemmThreads, r = idx / BK, kk = idx % BK;
      const int64_t m = m0 + r, k = k0 + kk;
      As[r * LDS + kk] = __float2bfloat16_rn(m < M && k < K ? __ldg(x + m * K + k) : 0.f);
    }
    // weight tile: operands of rows n0.., columns k0..k0+31.
    if constexpr (VEC) {
      if (t < BN) {
        const int64_t n = n0 + t;
        float wv[32];
        if (n < N) operand32<F>(w, n, k0 / BK, wv);
#pragma unroll
        for (int e = 0; e < BK; ++e)
          Bs[t * LDS + e] = __float2bfloat16_rn(n < N && k0 + e < K ? wv[e] : 0.f);
      }
    } else {
#pragma unroll
      for (int i = 0; i < BN * BK / kGemmThreads; ++i) {
        const int idx = t + i * kGemmThreads, r = idx / BK, kk = idx % BK;
        const int64_t n = n0 + r, k = k0 + kk;
        Bs[r * LDS + kk] = __float2bfloat16_rn(n < N && k < K ? operand<F>(w, n, k) : 0.f);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wm + 16 * i) * LDS + kk, LDS);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + (wn + 16 * j) * LDS + kk, LDS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm + 16 * i) * LDC + wn + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int idx = t; idx < BM * BN; idx += kGemmThreads) {
    const int r = idx / BN, c = idx % BN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < M && n < N) y[m * N + n] = Cs[r * LDC + c] * row_factor<F>(w, n) + (bias ? bias[n] : 0.f);
  }
}

template <Fmt F>
void launch_gemm_fmt(cudaStream_t st, const QW& w, const float* x, int64_t M, const float* bias, float* y) {
  const int64_t gx = (w.N + BN - 1) / BN, gy = (M + BM - 1) / BM;
  if (gx > 0x7fffffffLL || gy > 65535)
    throw std::invalid_argument("quantized GEMM: M or N too large for one launch (split the batch)");
  bool vec = (reinterpret_cast<uintptr_t>(w.data) % 16) == 0;
  if constexpr (F == Fmt::Int8) vec = vec && w.K % 16 == 0;
  if constexpr (F == Fmt::Nf4) vec = vec && w.K % 32 == 0 && w.blocksize % 32 == 0;
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  if (vec) gemm_kernel<F, true><<<grid, kGemmThreads, 0, st>>>(w, x, M, bias, y);
  else gemm_kernel<F, false><<<grid, kGemmThreads, 0, st>>>(w, x, M, bias, y);
  check_launch("gemm_kernel");
}

void launch_gemm(cudaStream_t st, int fmt, const QW& w, const float* x, int64_t M, const float* bias, float* y) {
  if (fmt == 0) launch_gemm_fmt<Fmt::Int8>(st, w, x, M, bias, y);
  else if (fmt == 1) launch_gemm_fmt<Fmt::Nf4>(st, w, x, M, bias, y);
  else launch_gemm_fmt<Fmt::Int4>(st, w, x, M, bias, y);
}

void launch_gemv(cudaStream_t st, int fmt, const QW& w, const float* x, int M, const float* bias, float* y);

void qmatmul(Launch l, int fmt, const float* x, int64_t M, const void* data, const void* scale, int64_t N,
             int64_t K, int64_t blocksize, const float* bias, float* y) {
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  if (fmt < 0 || fmt > 2) throw std::invalid_argument("unknown weight format code");
  if (fmt == 1 && (blocksize < 2 || blocksize % 2)) throw std::invalid_argument("blocksize must be an even int >= 2");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: y = bias (or 0)
    if (bias) {
      for (int64_t m = 0; m < M; ++m)
        check(cudaMemcpyAsync(y + m * N, bias, size_t(N) * 4, cudaMemcpyDeviceToDevice, st), "cudaMemcpyAsync");
    } else {
      check(cudaMemsetAsync(y, 0, size_t(M * N) * 4, st), "cudaMemsetAsync");
    }
    return;
  }
  const QW w{static_cast<const uint8_t*>(data), scale, N, K, blocksize};
  if (M <= kGemvMaxM) launch_gemv(st, fmt, w, x, static_cast<int>(M), bias, y);
  else launch_gemm(st, fmt, w, x, M, bias, y);
}

}  // namespace mpt::cuda
