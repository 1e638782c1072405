// Accumulators of 16 weight rows x 16 x rows (one register per weight row) into rows of y, shared by the
// AMX kernels (quant_gemm_amx.cpp, quant_q8_amx.cpp). Include only from files compiled with the AVX-512
// flags.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/quant_formats.h"

namespace mpt {
namespace tile_store_avx512 {

// After transpose(r), register q holds column kOrder[q] of the input (row i of the input in r[i]):
// the unpacks interleave pairs, so columns 1 and 2 of each group of 4 come out swapped.
constexpr int kOrder[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};

// r[0..15] (16 x 16 floats, row i in r[i]) transposed by four rounds of shuffles, up to kOrder.
inline void transpose(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4)
    for (int j = 0; j < 2; ++j) {
      const __m512d a = _mm512_castps_pd(t[i + j]), b = _mm512_castps_pd(t[i + j + 2]);
      r[i + j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[i + j + 2] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

// r[i] holds weight row n + i against x rows m0 .. m0 + 15 (lanes); writes y[m, n + i] = r[i][m - m0] *
// row_factor + bias for the rows m < M and n + i < N. r is transposed in place.
inline void store(__m512 r[16], const QWeight& w, int64_t n, int64_t m0, int64_t M, const float* bias, float* y) {
  const int64_t nn = std::min<int64_t>(16, w.N - n);
  const __mmask16 mask = static_cast<__mmask16>((1u << nn) - 1);
  alignas(64) float rf[16], b[16];
  for (int64_t i = 0; i < 16; ++i) {
    rf[i] = i < nn ? row_factor(w, n + i) : 0.f;
    b[i] = i < nn && bias ? bias[n + i] : 0.f;
  }
  const __m512 vrf = _mm512_load_ps(rf), vb = _mm512_load_ps(b);
  transpose(r);
  for (int q = 0; q < 16; ++q) {
    const int64_t m = m0 + kOrder[q];
    if (m < M) _mm512_mask_storeu_ps(y + m * w.N + n, mask, _mm512_fmadd_ps(r[q], vrf, vb));
  }
}

}  // namespace tile_store_avx512
}  // namespace mpt
