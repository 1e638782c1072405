// Quantized GEMV for small M (decode: M <= kGemvMaxM rows of activations), float32 activations
// and accumulation: the result equals ops.ref_matmul_* (q8=False) to float32 rounding.
//
// Fast path (K % 32 == 0, codes and x 16-byte aligned; every MPT shape): a thread block of 128
// threads owns kRows x (128 / tk) output rows; its tk threads along K (32, 64 or 128, from the
// number of 32-element chunks) stride over the chunks, so consecutive threads read consecutive
// 16-byte pieces of a row (coalesced) and every code byte is read once. Per chunk a thread loads
// the kRows rows' codes first (several independent 16-byte loads in flight), then for each group
// of 4 elements one float4 of x per activation row, reused for all kRows rows (x traffic from L1
// is what limits a float GEMV at 4 bits: 32 floats per 16 code bytes). Weights are decoded in
// registers: int8 / int4 by building the float 2^23 + code with one byte permute and subtracting
// (no int-to-float conversion), nf4 through its 16-entry table in shared memory (16 floats in 16
// banks: conflict-free for any pattern; a `constexpr` array indexed at run time would live in
// local memory). The block scale multiplies a chunk's sum once (nf4 blocks and int4 groups are
// whole chunks). Partial sums: a warp shuffle reduction, then across the warps along K through
// shared memory; deterministic (no atomics).
//
// Other shapes run the generic kernel: a warp per output row, a lane per k.
#include "cuda/ops_cuda.h"
#include "cuda/quant_decode.cuh"

namespace mpt::cuda {

constexpr int kThreads = 128;
constexpr int kRows = 4;  // output rows per row group
constexpr int kMaxM = 8;
static_assert(kMaxM == kGemvMaxM, "the GEMV register tile must cover kGemvMaxM");

template <Fmt F, int M>
__global__ void __launch_bounds__(kThreads)
    gemv_fast_kernel(QW w, const float* __restrict__ x, const float* __restrict__ bias, float* __restrict__ y) {
  __shared__ float tbl[16];
  __shared__ float partial[kThreads / 32][M * kRows];
  if constexpr (F == Fmt::Nf4) {
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    if (t < 16) tbl[t] = nf4_value(t);
    __syncthreads();
  }
  const int tk = blockDim.x, tx = threadIdx.x;
  const int64_t n0 = (int64_t(blockIdx.x) * blockDim.y + threadIdx.y) * kRows;
  const int64_t K = w.K, N = w.N, chunks = K / 32;

  float acc[M][kRows];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[m][r] = 0.f;

  for (int64_t c = tx; c < chunks; c += tk) {
    ChunkCodes<F> codes[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (n0 + r < N) load_chunk<F>(w, n0 + r, c, codes[r]);
      else codes[r] = ChunkCodes<F>{};
    }
    float part[M][kRows];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < kRows; ++r) part[m][r] = 0.f;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      float4 xv[M];
#pragma unroll
      for (int m = 0; m < M; ++m) xv[m] = __ldg(reinterpret_cast<const float4*>(x + m * K + 32 * c) + q);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float wv[4];
        decode4<F>(codes[r].words, q, tbl, wv);
#pragma unroll
        for (int m = 0; m < M; ++m)
          part[m][r] += wv[0] * xv[m].x + wv[1] * xv[m].y + wv[2] * xv[m].z + wv[3] * xv[m].w;
      }
    }
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[m][r] += part[m][r] * codes[r].scale;
  }

  // Reduce: within the warp, then across the tk / 32 warps of this row group.
  const int lane = tx % 32, warp = (threadIdx.y * tk + tx) / 32, kwarps = tk / 32;
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float s = warp_sum(acc[m][r]);
      if (lane == 0) partial[warp][m * kRows + r] = s;
    }
  __syncthreads();
  if (tx < M * kRows) {
    const int m = tx / kRows, r = tx % kRows;
    const int64_t n = n0 + r;
    if (n < N) {
      float s = 0.f;
      for (int k = 0; k < kwarps; ++k) s += partial[threadIdx.y * kwarps + k][tx];
      y[m * N + n] = s * row_factor<F>(w, n) + (bias ? bias[n] : 0.f);
    }
  }
}

// Any shape: a warp per output row, a lane per k.
template <Fmt F>
__global__ void __launch_bounds__(kThreads)
    gemv_generic_kernel(QW w, const float* __restrict__ x, int M, const float* __restrict__ bias, float* __restrict__ y) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (n >= w.N) return;
  float acc[kMaxM];
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) acc[m] = 0.f;
  for (int64_t k = lane; k < w.K; k += 32) {
    const float wv = operand<F>(w, n, k);
#pragma unroll
    for (int m = 0; m < kMaxM; ++m)
      if (m < M) acc[m] += wv * __ldg(x + m * w.K + k);
  }
  const float rf = row_factor<F>(w, n);
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) {
    if (m >= M) break;
    const float s = warp_sum(acc[m]);
    if (lane == 0) y[m * w.N + n] = s * rf + (bias ? bias[n] : 0.f);
  }
}

template <Fmt F, int M>
static void launch_fast(cudaStream_t st, const QW& w, const float* x, const float* bias, float* y) {
  const int64_t chunks = w.K / 32;
  const int tk = chunks <= 32 ? 32 : chunks <= 64 ? 64 : 128;
  const int groups = kThreads / tk;
  const unsigned grid = grid_1d(w.N, kRows * groups, "quantized GEMV");
  gemv_fast_kernel<F, M><<<grid, dim3(tk, groups), 0, st>>>(w, x, bias, y);
  check_launch("gemv_fast_kernel");
}

template <Fmt F>
void launch_gemv_fmt(cudaStream_t st, const QW& w, const float* x, int M, const float* bias, float* y) {
  bool fast = w.K % 32 == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if constexpr (F == Fmt::Nf4) fast = fast && w.blocksize % 32 == 0;
  if (!fast) {
    gemv_generic_kernel<F><<<grid_1d(w.N, kThreads / 32, "quantized GEMV"), kThreads, 0, st>>>(w, x, M, bias, y);
    check_launch("gemv_generic_kernel");
    return;
  }
  switch (M) {
    case 1: return launch_fast<F, 1>(st, w, x, bias, y);
    case 2: return launch_fast<F, 2>(st, w, x, bias, y);
    case 3: return launch_fast<F, 3>(st, w, x, bias, y);
    case 4: return launch_fast<F, 4>(st, w, x, bias, y);
    case 5: return launch_fast<F, 5>(st, w, x, bias, y);
    case 6: return launch_fast<F, 6>(st, w, x, bias, y);
    case 7: return launch_fast<F, 7>(st, w, x, bias, y);
    default: return launch_fast<F, 8>(st, w, x, bias, y);
  }
}

void launch_gemv(cudaStream_t st, int fmt, const QW& w, const float* x, int M, const float* bias, float* y) {
  if (fmt == 0) launch_gemv_fmt<Fmt::Int8>(st, w, x, M, bias, y);
  else if (fmt == 1) launch_gemv_fmt<Fmt::Nf4>(st, w, x, M, bias, y);
  else launch_gemv_fmt<Fmt::Int4>(st, w, x, M, bias, y);
}

}  // namespace mpt::cuda
