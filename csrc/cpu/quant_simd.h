// The SIMD matmul over quantized weights, written once over a small vector type V and compiled
// twice: by quant_matmul_avx2.cpp (V = 8 floats) and quant_matmul_avx512.cpp (V = 16 floats).
// Everything here lives in the includer's namespace (QSIMD_NS) so the two builds never mix.
//
// Weights are decoded 32 at a time into float vectors, in a "kernel order" that may permute the
// 32 positions of a chunk (NF4's high/low nibbles give even and odd k); x is repacked once per call
// into the same order, so no shuffles run in the inner loops. Sums per output run over k in a fixed
// order that depends on neither the thread count nor the row partition: results are deterministic.
//   M <= 8 (decode): passes of up to 4 x rows over tiles of W rows, so each weight byte comes from
//   memory once; rows split across threads.
//   M > 8 (prefill): blocks of 96 weight rows x 256 k are decoded to float once and reused by
//   every 2V-row panel of x through an NR x 2V register-tile outer-product kernel.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace QSIMD_NS {

constexpr int kChunk = 32;
constexpr int NV = kChunk / V::L;  // vectors per chunk
constexpr int kPrefetchBytes = 4096;

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Decodes chunks of one weight row, 32 weights at a time into NV vectors in kernel order; weights
// past K decode to 0. Specialised per format so the inner loops hold no switch and no division.
template <QFormat FMT>
struct RowDecoder {
  using F = typename V::F;
  const QWeight& w;
  const uint8_t* p = nullptr;
  float* sf;  // int4: the half scales of groups [g0, ...) of the row, widened (F16C); scale_scratch
  int64_t g0 = 0;
  int64_t n = 0, f0 = 0;
  int shift = -1;  // log2(blocksize) for NF4 rows on the fast path, else -1
  // sbuf: scale_scratch(w) floats, owned by the caller (a buffer here would make the compiler keep the
  // accumulators of the hot loops in memory).
  RowDecoder(const QWeight& w_, float* sbuf) : w(w_), sf(sbuf) {}

  // Row n_, to be decoded over k in [k0, k1) (k0 a multiple of 32): int4 widens that range's scales
  // once here, so the inner loop reads float scales.
  void row(int64_t n_, int64_t k0 = 0, int64_t k1 = INT64_MAX) {
    n = n_;
    if (FMT == QFormat::Int8) {
      p = w.data + n * w.K;
    } else if (FMT == QFormat::Int4) {
      const int64_t G = int4_groups(w.K), ga = k0 >> 5, gb = std::min(G, (std::min(k1, w.K) + kChunk - 1) >> 5);
      p = w.data + n * G * 16;
      g0 = ga;
      V::widen_halves(w.scale16 + n * G + ga, gb - ga, sf);
    } else {
      f0 = n * w.K;
      const int64_t bs = w.blocksize;
      shift = (f0 % kChunk == 0 && bs % kChunk == 0 && (bs & (bs - 1)) == 0) ? __builtin_ctzll(bs) : -1;
    }
  }

  inline __attribute__((always_inline)) void chunk(int64_t k, F* out) const {
    if (FMT == QFormat::Int4) {
      V::decode_int4(p + (k >> 5) * 16, sf[(k >> 5) - g0], out);
      return;
    }
    if (k + kChunk <= w.K) {
      if (FMT == QFormat::Int8) return V::decode_int8(p + k, out);
      if (shift >= 0) return V::decode_nf4(w.data + ((f0 + k) >> 1), w.scale[(f0 + k) >> shift], out);
    }
    slow(k, out);
  }

  // Software prefetch a few cache lines ahead in the weight stream (decode reads rows back to back).
  inline __attribute__((always_inline)) void prefetch(int64_t k) const {
    const uint8_t* a = FMT == QFormat::Int8   ? p + k
                       : FMT == QFormat::Int4 ? p + (k >> 5) * 16
                                              : w.data + ((f0 + k) >> 1);
    _mm_prefetch(reinterpret_cast<const char*>(a + kPrefetchBytes), _MM_HINT_T0);
  }

  __attribute__((noinline)) void slow(int64_t k, F* out) const {
    alignas(64) float tmp[kChunk];
    for (int i = 0; i < kChunk; ++i) {
      const int64_t kk = k + V::kpos(FMT, i);
      tmp[i] = kk < w.K ? decode_scalar(w, n, kk) : 0.f;
    }
    for (int v = 0; v < NV; ++v) out[v] = V::load(tmp + v * V::L);
  }
};

// Per-thread scratch a RowDecoder needs (int4: one row's widened scales).
inline std::shared_ptr<std::vector<float>> scale_scratch(const QWeight& w) {
  return std::make_shared<std::vector<float>>(w.fmt == QFormat::Int4 ? static_cast<size_t>(int4_groups(w.K)) : 0);
}

// x (M x K) -> M x Kp in kernel order, zero-padded.
inline void pack_rows(const QWeight& w, const float* x, int64_t M, int64_t Kp, float* out) {
  const int64_t K = w.K;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < Kp; c += kChunk)
      for (int i = 0; i < kChunk; ++i) {
        const int64_t k = c + V::kpos(w.fmt, i);
        out[m * Kp + c + i] = k < K ? x[m * K + k] : 0.f;
      }
}

template <QFormat FMT, int MB>
void gemv_rows(const QWeight& w, const float* xq, int64_t Kp, int64_t m0, const float* bias, float* y,
               int64_t n0, int64_t n1, float* sbuf) {
  using F = typename V::F;
  constexpr int U = MB == 1 ? 2 : 1;  // two chunks in flight hide the FMA latency of a single row
  const int64_t N = w.N;
  RowDecoder<FMT> dec(w, sbuf);
  for (int64_t n = n0; n < n1; ++n) {
    dec.row(n);
    F acc[MB][U][NV];
    for (int m = 0; m < MB; ++m)
      for (int u = 0; u < U; ++u)
        for (int v = 0; v < NV; ++v) acc[m][u][v] = V::zero();
    int64_t c = 0;
    for (; c + U * kChunk <= Kp; c += U * kChunk) {
      dec.prefetch(c);
      for (int u = 0; u < U; ++u) {
        F wv[NV];
        dec.chunk(c + u * kChunk, wv);
        for (int m = 0; m < MB; ++m)
          for (int v = 0; v < NV; ++v)
            acc[m][u][v] = V::fma(wv[v], V::load(xq + (m0 + m) * Kp + c + u * kChunk + v * V::L), acc[m][u][v]);
      }
    }
    for (; c < Kp; c += kChunk) {
      F wv[NV];
      dec.chunk(c, wv);
      for (int m = 0; m < MB; ++m)
        for (int v = 0; v < NV; ++v) acc[m][0][v] = V::fma(wv[v], V::load(xq + (m0 + m) * Kp + c + v * V::L), acc[m][0][v]);
    }
    const float rf = row_factor(w, n), b = bias ? bias[n] : 0.f;
    for (int m = 0; m < MB; ++m) {
      F s = acc[m][0][0];
      for (int v = 1; v < NV; ++v) s = V::add(s, acc[m][0][v]);
      for (int u = 1; u < U; ++u)
        for (int v = 0; v < NV; ++v) s = V::add(s, acc[m][u][v]);
      y[(m0 + m) * N + n] = V::hsum(s) * rf + b;
    }
  }
}

constexpr int MR = 2 * V::L;  // x rows per panel
constexpr int NR = V::NR;     // weight rows per register tile (2*NR accumulators)
constexpr int64_t KC = 256, NC = 32 * NR;  // NC: fewer passes over the packed x, which outgrows the caches for large K

// C[r][0..MR) += sum_k w[r][k] * xp[k][0..MR) for r < R.
template <int R>
inline void micro(int64_t kc, const float* xp, const float* wb, int64_t ldw, float* C, int64_t ldc) {
  using F = typename V::F;
  F a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = V::zero();
  for (int64_t k = 0; k < kc; ++k) {
    const F x0 = V::load(xp + k * MR), x1 = V::load(xp + k * MR + V::L);
    for (int r = 0; r < R; ++r) {
      const F b = V::set1(wb[r * ldw + k]);
      a0[r] = V::fma(b, x0, a0[r]);
      a1[r] = V::fma(b, x1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    V::store(C + r * ldc, V::add(V::load(C + r * ldc), a0[r]));
    V::store(C + r * ldc + V::L, V::add(V::load(C + r * ldc + V::L), a1[r]));
  }
}

template <int... R>
inline void micro_dispatch(std::integer_sequence<int, R...>, int r, int64_t kc, const float* xp, const float* wb,
                           int64_t ldw, float* C, int64_t ldc) {
  using Fn = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t);
  static constexpr Fn table[] = {&micro<R + 1>...};
  table[r - 1](kc, xp, wb, ldw, C, ldc);
}

inline void micro_any(int r, int64_t kc, const float* xp, const float* wb, int64_t ldw, float* C, int64_t ldc) {
  micro_dispatch(std::make_integer_sequence<int, NR>{}, r, kc, xp, wb, ldw, C, ldc);
}

template <QFormat FMT>
void gemm(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  const int64_t N = w.N, K = w.K, Kp = round_up(K, kChunk), Mp = round_up(M, MR), P = Mp / MR;
  // x as panels [P][Kp][MR] in kernel order, shared by all threads.
  std::vector<float> xt(static_cast<size_t>(Mp * Kp));
  int kp[kChunk];
  for (int i = 0; i < kChunk; ++i) kp[i] = V::kpos(FMT, i);
  parallel_for(P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* dst = xt.data() + p * Kp * MR;
      for (int j = 0; j < MR; ++j) {
        const int64_t m = p * MR + j;
        const float* xr = x + m * K;
        if (m >= M) {
          for (int64_t k = 0; k < Kp; ++k) dst[k * MR + j] = 0.f;
          continue;
        }
        for (int64_t c = 0; c < Kp; c += kChunk)
          for (int i = 0; i < kChunk; ++i) {
            const int64_t k = c + kp[i];
            dst[(c + i) * MR + j] = k < K ? xr[k] : 0.f;
          }
      }
    }
  });
  struct Chunks {
    const QWeight& w;
    const std::vector<float>& xt;
    int64_t M, Mp, Kp, P;
    const float* bias;
    float* y;
    auto make_worker() {
      auto wbuf = std::make_shared<std::vector<float>>(static_cast<size_t>(NC * KC));
      auto C = std::make_shared<std::vector<float>>(static_cast<size_t>(NC * Mp));
      auto sb = scale_scratch(w);
      return [this, wbuf, C, sb](int64_t n0, int64_t n1) { block(n0, n1, wbuf->data(), C->data(), sb->data()); };
    }
    void block(int64_t n0, int64_t n1, float* wb, float* C, float* sb) const {
      const int64_t nr = n1 - n0, N = w.N;
      RowDecoder<FMT> dec(w, sb);
      std::fill(C, C + nr * Mp, 0.f);
      for (int64_t k0 = 0; k0 < Kp; k0 += KC) {
        const int64_t kc = std::min(KC, Kp - k0);
        for (int64_t r = 0; r < nr; ++r) {
          dec.row(n0 + r, k0, k0 + kc);
          for (int64_t c = 0; c < kc; c += kChunk) {
            typename V::F v[NV];
            dec.chunk(k0 + c, v);
            for (int i = 0; i < NV; ++i) V::store(wb + r * kc + c + i * V::L, v[i]);
          }
        }
        for (int64_t p = 0; p < P; ++p) {
          const float* xp = xt.data() + (p * Kp + k0) * MR;
          for (int64_t r0 = 0; r0 < nr; r0 += NR)
            micro_any(static_cast<int>(std::min<int64_t>(NR, nr - r0)), kc, xp, wb + r0 * kc, kc,
                      C + r0 * Mp + p * MR, Mp);
        }
      }
      float rf[NC], b[NC];
      for (int64_t r = 0; r < nr; ++r) {
        rf[r] = row_factor(w, n0 + r);
        b[r] = bias ? bias[n0 + r] : 0.f;
      }
      for (int64_t m = 0; m < M; ++m)  // y written row by row: contiguous stores
        for (int64_t r = 0; r < nr; ++r) y[m * N + n0 + r] = C[r * Mp + m] * rf[r] + b[r];
    }
  };
  for_row_chunks(N, NC, Chunks{w, xt, M, Mp, Kp, P, bias, y});
}

template <QFormat FMT>
void run(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  if (M > 8) return gemm<FMT>(w, x, M, bias, y);
  const int64_t Kp = round_up(w.K, kChunk);
  std::vector<float> xq(static_cast<size_t>(M * Kp));
  pack_rows(w, x, M, Kp, xq.data());
  struct Rows {
    const QWeight& w;
    const float* xq;
    int64_t M, Kp;
    const float* bias;
    float* y;
    auto make_worker() {
      auto sb = scale_scratch(w);
      return [this, sb](int64_t t0, int64_t t1) { tile(t0, t1, sb->data()); };
    }
    // Up to 4 x rows per pass over a tile of 16 weight rows; with more, the tile decoded in the
    // first pass is still in cache for the next, so memory sees each weight byte once.
    void tile(int64_t t0, int64_t t1, float* sb) const {
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        switch (std::min<int64_t>(4, M - m0)) {
          case 1: gemv_rows<FMT, 1>(w, xq, Kp, m0, bias, y, t0, t1, sb); break;
          case 2: gemv_rows<FMT, 2>(w, xq, Kp, m0, bias, y, t0, t1, sb); break;
          case 3: gemv_rows<FMT, 3>(w, xq, Kp, m0, bias, y, t0, t1, sb); break;
          default: gemv_rows<FMT, 4>(w, xq, Kp, m0, bias, y, t0, t1, sb); break;
        }
      }
    }
  };
  for_row_chunks(w.N, decode_chunk(w.N), Rows{w, xq.data(), M, Kp, bias, y});
}

inline void qmatmul_simd(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  switch (w.fmt) {
    case QFormat::Int8: return run<QFormat::Int8>(w, x, M, bias, y);
    case QFormat::Nf4: return run<QFormat::Nf4>(w, x, M, bias, y);
    case QFormat::Int4: return run<QFormat::Int4>(w, x, M, bias, y);
  }
}

}  // namespace QSIMD_NS
}  // namespace mpt
