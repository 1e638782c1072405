// Quantized GEMV for small M (decode: M <= kGemvMaxM rows of activations). One warp per output
// row n reads that row's codes exactly once, with 16-byte loads where the layout allows, and
// multiplies every decoded weight by all M activation rows (held in L1/L2 via __ldg). Float32
// throughout: the result equals ops.ref_matmul_* to float32 rounding.
//
// Vector path (chunks of 32 consecutive k from one or two 16-byte loads): int8 when K % 16 == 0,
// nf4 when K % 32 == 0 and blocksize % 32 == 0, int4 always (rows are whole 16-byte groups);
// each needs a 16-byte-aligned code pointer. Anything else runs the scalar path (a lane per k).
#include "cuda/ops_cuda.h"
#include "cuda/quant_decode.cuh"

namespace mpt::cuda {

constexpr int kGemvWarps = 4;  // rows per thread block
constexpr int kMaxM = 8;
static_assert(kMaxM == kGemvMaxM, "the GEMV register tile must cover kGemvMaxM");

template <Fmt F, bool VEC, bool XVEC>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(QW w, const float* __restrict__ x, int M, const float* __restrict__ bias, float* __restrict__ y) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (n >= w.N) return;
  const int64_t K = w.K;
  float acc[kMaxM];
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) acc[m] = 0.f;

  if constexpr (VEC) {
    const int64_t chunks = (K + 31) / 32;
    for (int64_t c = lane; c < chunks; c += 32) {
      float wv[32];
      operand32<F>(w, n, c, wv);
      const int64_t k0 = 32 * c;
#pragma unroll
      for (int m = 0; m < kMaxM; ++m) {
        if (m >= M) break;
        const float* xr = x + m * K + k0;
        float s = 0.f;
        if constexpr (XVEC) {  // K % 4 == 0: a float4 lies wholly inside or outside the row
#pragma unroll
          for (int e = 0; e < 32; e += 4) {
            if (k0 + e < K) {
              const float4 xv = __ldg(reinterpret_cast<const float4*>(xr + e));
              s += wv[e] * xv.x + wv[e + 1] * xv.y + wv[e + 2] * xv.z + wv[e + 3] * xv.w;
            }
          }
        } else {
#pragma unroll
          for (int e = 0; e < 32; ++e)
            if (k0 + e < K) s += wv[e] * __ldg(xr + e);
        }
        acc[m] += s;
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      const float wv = operand<F>(w, n, k);
#pragma unroll
      for (int m = 0; m < kMaxM; ++m) {
        if (m >= M) break;
        acc[m] += wv * __ldg(x + m * K + k);
      }
    }
  }

  const float rf = row_factor<F>(w, n);
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) {
    if (m >= M) break;
    const float s = warp_sum(acc[m]);
    if (lane == 0) y[m * w.N + n] = s * rf + (bias ? bias[n] : 0.f);
  }
}

template <Fmt F, bool VEC, bool XVEC>
static void launch(cudaStream_t st, const QW& w, const float* x, int M, const float* bias, float* y) {
  const unsigned grid = grid_1d(w.N, kGemvWarps, "quantized GEMV");
  gemv_kernel<F, VEC, XVEC><<<grid, kGemvWarps * 32, 0, st>>>(w, x, M, bias, y);
  check_launch("gemv_kernel");
}

template <Fmt F>
void launch_gemv_fmt(cudaStream_t st, const QW& w, const float* x, int M, const float* bias, float* y) {
  const bool aligned = (reinterpret_cast<uintptr_t>(w.data) % 16) == 0;
  bool vec = aligned;
  if constexpr (F == Fmt::Int8) vec = vec && w.K % 16 == 0;
  if constexpr (F == Fmt::Nf4) vec = vec && w.K % 32 == 0 && w.blocksize % 32 == 0;
  const bool xvec = w.K % 4 == 0 && (reinterpret_cast<uintptr_t>(x) % 16) == 0;
  if (!vec) launch<F, false, false>(st, w, x, M, bias, y);
  else if (xvec) launch<F, true, true>(st, w, x, M, bias, y);
  else launch<F, true, false>(st, w, x, M, bias, y);
}

void launch_gemv(cudaStream_t st, int fmt, const QW& w, const float* x, int M, const float* bias, float* y) {
  if (fmt == 0) launch_gemv_fmt<Fmt::Int8>(st, w, x, M, bias, y);
  else if (fmt == 1) launch_gemv_fmt<Fmt::Nf4>(st, w, x, M, bias, y);
  else launch_gemv_fmt<Fmt::Int4>(st, w, x, M, bias, y);
}

}  // namespace mpt::cuda
