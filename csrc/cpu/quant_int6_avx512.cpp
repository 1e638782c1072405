// int6 matmul (quant_int6.h), AVX-512 VNNI: two groups of 32 k a vector, their 4-byte lanes alternating
// (lane L of pair p: group 2p + L % 2), so that the pair's two half scales widen into the lane order with one
// broadcast. x comes in that order (int6_x_avx512), with -32 x each lane's code sum as the dot's start, so
// each group's dot is exact in int32 as in the other variants.
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "cpu/prefetch.h"
#include "cpu/quant_int6.h"

namespace mpt {
namespace {

struct PairDecoder {
  // dwords of a pair's 48 bytes: 0-3 group 0's nibbles, 4-5 its high bits, 6-9 group 1's nibbles, 10-11 its high bits
  const __m512i nib_idx = _mm512_setr_epi32(0, 6, 1, 7, 2, 8, 3, 9, 0, 6, 1, 7, 2, 8, 3, 9);
  // lane L holds k 4j + 16h .. + 3 (j = L % 8 / 2, h = L / 8): high bits in dword j % 2, shifted by 2 (j / 2 + 2h)
  const __m512i hi_idx = _mm512_setr_epi32(4, 10, 5, 11, 4, 10, 5, 11, 4, 10, 5, 11, 4, 10, 5, 11);
  const __m512i hi_shift = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
  const __m512i low4 = _mm512_set1_epi8(15), bits45 = _mm512_set1_epi8(0x30);

  // The pair's codes (0..63) from its 48 bytes loaded as `raw` (the 16 bytes after them are not used).
  __m512i operator()(__m512i raw) const {
    __m512i nib = _mm512_permutexvar_epi32(nib_idx, raw);
    nib = _mm512_mask_srli_epi32(nib, 0xff00, nib, 4);
    const __m512i hi = _mm512_srlv_epi32(_mm512_permutexvar_epi32(hi_idx, raw), hi_shift);
    const __m512i h45 = _mm512_and_si512(_mm512_slli_epi32(hi, 4), bits45);
    return _mm512_ternarylogic_epi32(low4, nib, h45, 0xca);  // low4 ? nib : h45, bit by bit
  }
};

// Software prefetch distance, in runs of R rows. In the engine's decode step (synthetic 1.3B, the 50432 x 2048
// logits, 3 processes each way) one run ahead took the logits to 0.85-0.95 of int8's time, four runs ahead to
// about int8's, half a run to int8's; without it, 1.7x int8's (the hardware prefetchers lose the 4 interleaved rows).
constexpr int64_t kAheadTiles = 1;
// From this many x rows, 16 weight rows in the lanes (rows16_block). The 50432 x 2048 logits from memory, 2 threads
// (medians of 5, rotated with int8 rows8): 8 x rows 4.4 ms against 5.5 with the row tiles (int8 rows8 3.1), 32 rows
// 9.7 against 19.5 (7.0), 512 rows 241 against 434 ms (190); 4 x rows 4.5 against 2.8, so 4 stay on the row tiles.
constexpr int64_t kRows16MinM = 8;

// Rows n0 .. n0 + R - 1 of W against MT x rows from m0. R rows at a time share each load of x (loads, not
// arithmetic, bound one row at a time: 3 of x's 64-byte vectors a pair of groups); the accumulators stay in registers.
template <int R, int MT>
void rows_tile(const Int6Weight& w, const Int6XAvx512& x, int64_t m0, const float* bias, float* y, int64_t n0,
               float* wscale) {
  const int64_t G = w.G, P = x.P, row_bytes = G * kInt6GroupBytes, ws_stride = G + 2;
  const PairDecoder decode;
  const int8_t* xq = x.q.data() + m0 * P * 64;
  const int32_t* xoff = x.off.data() + m0 * P * 16;
  const uint8_t* codes = w.codes + n0 * row_bytes;
  // Each row's scales widened once and times each x row's (the pair's lanes then need no multiply), a zero
  // after an odd count (a lone group's partner).
  for (int r = 0; r < R; ++r) {
    const uint16_t* sc = w.scales + (n0 + r) * G;
    for (int t = 0; t < MT; ++t) {
      float* ws = wscale + (r * MT + t) * ws_stride;
      const float* xdt = x.dg.data() + (m0 + t) * G;
      int64_t g = 0;
      for (; g + 16 <= G; g += 16)
        _mm512_storeu_ps(ws + g, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + g))),
                                               _mm512_loadu_ps(xdt + g)));
      for (; g < G; ++g) ws[g] = _cvtsh_ss(sc[g]) * xdt[g];
      ws[G] = 0.f;
    }
  }
  __m512 acc[R][MT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t) acc[r][t] = _mm512_setzero_ps();
  // The R rows are one run of bytes, consumed R x 48 bytes a pair: prefetch the same amount kAheadTiles runs
  // further on, so that the stream runs ahead of the R row streams the loads interleave.
  const uint8_t* ahead = codes + kAheadTiles * R * row_bytes;
  for (int64_t p = 0; p < P; ++p) {
    for (int l = 0; l < R * 48; l += 64) prefetch<3>(ahead + p * R * 48 + l);
    __m512i c[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* at = codes + r * row_bytes + p * 48;
      // a row's last pair loads only its own bytes (a lone group's partner lanes are 0), the others 64 bytes
      c[r] = decode(p + 1 < P ? _mm512_loadu_si512(at) : _mm512_maskz_loadu_epi32(2 * p + 1 == G ? 0x3f : 0xfff, at));
    }
    for (int t = 0; t < MT; ++t) {
      const int64_t i = t * P + p;
      const __m512i q = _mm512_loadu_si512(xq + i * 64), off = _mm512_loadu_si512(xoff + i * 16);
      for (int r = 0; r < R; ++r) {
        double pair;  // the pair's two scales (weight x x), repeated over the lanes in their order
        __builtin_memcpy(&pair, wscale + (r * MT + t) * ws_stride + 2 * p, 8);
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(off, c[r], q)),
                                    _mm512_castpd_ps(_mm512_set1_pd(pair)), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < MT; ++t)
      y[(m0 + t) * w.N + n0 + r] = _mm512_reduce_add_ps(acc[r][t]) + (bias ? bias[n0 + r] : 0.f);
}

// Rows [n0, n1) against x rows [m0, m0 + MT): 4 rows at a time, then one.
template <int MT>
void rows_span(const Int6Weight& w, const Int6XAvx512& x, int64_t m0, const float* bias, float* y, int64_t n0,
               int64_t n1, float* wscale) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) rows_tile<4, MT>(w, x, m0, bias, y, n, wscale);
  for (; n < n1; ++n) rows_tile<1, MT>(w, x, m0, bias, y, n, wscale);
}

// In place: r[i] lane j <- r[j] lane i (16 x 16 dwords).
static inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);
    t[4 + c] = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
    t[8 + c] = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xdd);
    r[4 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0xdd);
  }
}

// Many x rows: 16 rows of W in the lanes. A pair of groups of 16 rows is decoded as above and transposed, so that
// vector L holds lane L's 4 codes of every row; each x row then takes one dpbusd a vector against its broadcast
// 4 codes, and one convert and one fma a group for all 16 rows (one row at a time pays those per row).
void rows16_block(const Int6Weight& w, const Int6XAvx512& x, const float* bias, float* y, int64_t n0, float* rs,
                  float* yacc) {
  const int64_t G = w.G, P = x.P, M = x.M, row_bytes = G * kInt6GroupBytes;
  const PairDecoder decode;
  for (int r = 0; r < 16; ++r)  // the rows' scales, widened and transposed: rs[g * 16 + r]; a zero group after G
    for (int64_t g = 0; g < G; ++g) rs[g * 16 + r] = _cvtsh_ss(w.scales[(n0 + r) * G + g]);
  for (int r = 0; r < 16; ++r) rs[G * 16 + r] = 0.f;
  for (int64_t m = 0; m < M; ++m) _mm512_storeu_ps(yacc + m * 16, _mm512_setzero_ps());
  const uint8_t* codes = w.codes + n0 * row_bytes;
  const uint8_t* ahead = codes + 16 * row_bytes;  // the next block, as fast as this one is consumed
  for (int64_t p = 0; p < P; ++p) {
    for (int l = 0; l < 16 * 48; l += 64) prefetch<2>(ahead + p * 16 * 48 + l);
    __m512i T[16];
    for (int r = 0; r < 16; ++r) {
      const uint8_t* at = codes + r * row_bytes + p * 48;
      T[r] = decode(p + 1 < P ? _mm512_loadu_si512(at) : _mm512_maskz_loadu_epi32(2 * p + 1 == G ? 0x3f : 0xfff, at));
    }
    transpose16(T);
    const __m512 s0 = _mm512_loadu_ps(rs + 2 * p * 16), s1 = _mm512_loadu_ps(rs + (2 * p + 1) * 16);
    const bool pair = 2 * p + 1 < G;  // else a lone group: its partner's lanes are all zero
    for (int64_t m = 0; m < M; ++m) {
      const int64_t i = m * P + p;
      const int32_t* xq = reinterpret_cast<const int32_t*>(x.q.data() + i * 64);
      __m512i a0 = _mm512_set1_epi32(x.offg[m * G + 2 * p]);
      __m512i a1 = _mm512_set1_epi32(pair ? x.offg[m * G + 2 * p + 1] : 0);
      for (int L = 0; L < 16; L += 2) {
        a0 = _mm512_dpbusd_epi32(a0, T[L], _mm512_set1_epi32(xq[L]));
        a1 = _mm512_dpbusd_epi32(a1, T[L + 1], _mm512_set1_epi32(xq[L + 1]));
      }
      const float xd0 = x.dg[m * G + 2 * p], xd1 = pair ? x.dg[m * G + 2 * p + 1] : 0.f;
      __m512 acc = _mm512_loadu_ps(yacc + m * 16);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_mul_ps(s0, _mm512_set1_ps(xd0)), acc);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_mul_ps(s1, _mm512_set1_ps(xd1)), acc);
      _mm512_storeu_ps(yacc + m * 16, acc);
    }
  }
  const __m512 b = bias ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
  for (int64_t m = 0; m < M; ++m) _mm512_storeu_ps(y + m * w.N + n0, _mm512_add_ps(_mm512_loadu_ps(yacc + m * 16), b));
}

}  // namespace

void matmul_int6_rows_avx512(const Int6Weight& w, const Int6XAvx512& x, const float* bias, float* y, int64_t n0,
                             int64_t n1) {
  std::vector<float> wscale(static_cast<size_t>(4 * 4 * (w.G + 2)));  // R x MT rows of scales
  if (x.M >= kRows16MinM) {
    std::vector<float> rs(static_cast<size_t>((w.G + 2) * 16)), yacc(static_cast<size_t>(x.M * 16));
    for (; n0 + 16 <= n1; n0 += 16) rows16_block(w, x, bias, y, n0, rs.data(), yacc.data());
  }
  // x rows in tiles of 4 over the same rows of W (which stay in L1 / L2 between tiles)
  constexpr int64_t kRowsStep = 64;
  for (int64_t r0 = n0; r0 < n1; r0 += kRowsStep) {
    const int64_t r1 = r0 + kRowsStep < n1 ? r0 + kRowsStep : n1;
    int64_t m0 = 0;
    for (; m0 + 4 <= x.M; m0 += 4) rows_span<4>(w, x, m0, bias, y, r0, r1, wscale.data());
    switch (x.M - m0) {
      case 3: rows_span<3>(w, x, m0, bias, y, r0, r1, wscale.data()); break;
      case 2: rows_span<2>(w, x, m0, bias, y, r0, r1, wscale.data()); break;
      case 1: rows_span<1>(w, x, m0, bias, y, r0, r1, wscale.data()); break;
      default: break;
    }
  }
}

}  // namespace mpt
