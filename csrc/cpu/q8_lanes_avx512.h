// Lane helpers shared by the AVX-512 q8 kernels (quant_matmul_avx512.cpp's q8_wide and the GEMM
// tiles in quant_gemm_avx512.cpp). Both must lay out a step identically for their rows to be
// bit-identical, so they use these same functions. Include only from *_avx512.cpp files.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "cpu/quant_formats.h"

namespace mpt {
namespace avx512_lanes {

// The first n bytes of a 64-byte vector (all for n >= 64, none for n <= 0).
inline __mmask64 bytes_mask(int64_t n) { return n >= 64 ? ~0ULL : n <= 0 ? 0ULL : (1ULL << n) - 1; }

// 4x4 dword transposes inside each 128-bit lane: out[j] lane (c, a) = in[a] lane (c, j).
inline void transpose4(const __m512i* in, __m512i* out) {
  const __m512i a0 = _mm512_unpacklo_epi32(in[0], in[1]), a1 = _mm512_unpackhi_epi32(in[0], in[1]);
  const __m512i a2 = _mm512_unpacklo_epi32(in[2], in[3]), a3 = _mm512_unpackhi_epi32(in[2], in[3]);
  out[0] = _mm512_unpacklo_epi64(a0, a2), out[1] = _mm512_unpackhi_epi64(a0, a2);
  out[2] = _mm512_unpacklo_epi64(a1, a3), out[3] = _mm512_unpackhi_epi64(a1, a3);
}

// nf4 codes (bitsandbytes order: even k in the high nibble) as unsigned bytes kNf4Int8[q] + 128 (the
// operand vpdpbusd takes; as int8's cb ^ 0x80), by a byte shuffle of each nibble. raw holds 4 blocks of
// 32 k, 16 bytes each, one block per 128-bit lane; lo gets k 0..15 of each block in order, hi k 16..31.
// A zero byte (masked-off tail) looks up nibble 0 (kNf4Int8[0] + 128), to be met by x codes 0.
inline void nf4_bytes(__m512i raw, __m512i& lo, __m512i& hi) {
  const __m512i lo4 = _mm512_set1_epi8(15);
  const __m512i table = _mm512_broadcast_i32x4(
      _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8)), _mm_set1_epi8(static_cast<char>(0x80))));
  const __m512i ev = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4));
  const __m512i od = _mm512_shuffle_epi8(table, _mm512_and_si512(raw, lo4));
  lo = _mm512_unpacklo_epi8(ev, od);
  hi = _mm512_unpackhi_epi8(ev, od);
}

// One q8 block of Q8Rows' arithmetic (d = amax / 127 with NaN ignored, q = round-half-even(x / d)
// clamped to +-127, NaN -> 0, all codes 0 when d is 0): the first n (<= 32) floats of x, the rest as
// 0. Writes the 32 codes, returns d; sum gets the sum of the codes.
inline float quantize_block32(const float* x, int64_t n, int8_t* codes, int32_t& sum) {
  __m512 v[2];
  for (int h = 0; h < 2; ++h) {
    const int64_t left = n - 16 * h;
    v[h] = left >= 16 ? _mm512_loadu_ps(x + 16 * h)
           : left > 0 ? _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << left) - 1), x + 16 * h)
                      : _mm512_setzero_ps();
  }
  const __m512 a0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v[0], v[0], _CMP_ORD_Q), _mm512_abs_ps(v[0]));
  const __m512 a1 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v[1], v[1], _CMP_ORD_Q), _mm512_abs_ps(v[1]));
  const float d = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1)) / 127.0f;
  const __m512 vd = _mm512_set1_ps(d), lim = _mm512_set1_ps(127.f), nlim = _mm512_set1_ps(-127.f);
  __m512i qi[2];
  for (int h = 0; h < 2; ++h) {
    __m512 r = _mm512_roundscale_ps(_mm512_div_ps(v[h], vd), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // NaN (x NaN, inf / inf) -> 0; d == 0 (amax 0 or underflowed) -> all codes 0
    r = _mm512_maskz_mov_ps(d > 0.f ? _mm512_cmp_ps_mask(r, r, _CMP_ORD_Q) : 0, r);
    qi[h] = _mm512_cvtps_epi32(_mm512_min_ps(lim, _mm512_max_ps(nlim, r)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 16 * h), _mm512_cvtsepi32_epi8(qi[h]));
  }
  sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qi[0], qi[1]));
  return d;
}

// The q8 block that int32 lane p of a step (16 blocks of 32 k) holds: the order the weight regrouping
// (dword transposes inside 128-bit lanes) produces, so x is laid out to match it.
template <QFormat FMT>
constexpr int step_block(int p) {
  return FMT != QFormat::Int8 ? 4 * (p & 3) + (p >> 2) : 8 * (p >> 3) + 2 * (p & 3) + ((p >> 2) & 1);
}
template <QFormat FMT>
inline __m512i step_block_index() {
  alignas(64) int32_t idx[16];
  for (int p = 0; p < 16; ++p) idx[p] = step_block<FMT>(p);
  return _mm512_load_si512(idx);
}

// Step st of x row xr (K floats) quantized and laid out for the kernels: vector v (q + 64 v) holds in
// lane p dword v of block step_block(p)'s 32 codes; init lane p = -off * (sum of the block's codes);
// d lane p = the block's scale. evens_first (nf4's q8_wide order): each block's codes are taken as
// [even k, odd k] before the dword gather.
template <QFormat FMT>
inline void pack_x_step(const float* xr, int64_t K, int64_t st, int32_t off, bool evens_first, int8_t* q,
                        int32_t* init, float* d) {
  alignas(64) int8_t codes[16 * 32];
  alignas(64) float dv[16];
  alignas(64) int32_t sums[16];
  // within each 128-bit half of a block, even bytes then odd ones; then the halves' qwords as
  // [evens of half 0, evens of half 1, odds of half 0, odds of half 1]
  const __m256i eo = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                      0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int b = 0; b < 16; ++b) {
    const int64_t k0 = (st * 16 + b) * 32;
    int8_t* c = codes + b * 32;
    dv[b] = quantize_block32(xr + k0, K - k0, c, sums[b]);
    if (evens_first) {
      const __m256i t = _mm256_shuffle_epi8(_mm256_load_si256(reinterpret_cast<const __m256i*>(c)), eo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(c), _mm256_permute4x64_epi64(t, _MM_SHUFFLE(3, 1, 2, 0)));
    }
  }
  const __m512i bidx = step_block_index<FMT>(), gidx = _mm512_slli_epi32(bidx, 3);
  for (int v = 0; v < 8; ++v)
    _mm512_storeu_si512(q + 64 * v, _mm512_i32gather_epi32(_mm512_add_epi32(gidx, _mm512_set1_epi32(v)), codes, 4));
  const __m512i sm = _mm512_permutexvar_epi32(bidx, _mm512_load_si512(sums));
  _mm512_storeu_si512(init, _mm512_mullo_epi32(sm, _mm512_set1_epi32(-off)));
  _mm512_storeu_ps(d, _mm512_permutexvar_ps(bidx, _mm512_load_ps(dv)));
}

}  // namespace avx512_lanes
}  // namespace mpt
