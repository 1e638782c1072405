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
// A zero byte (masked-off tail) gives code -127 (byte 1), to be met by x codes 0.
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

}  // namespace avx512_lanes
}  // namespace mpt
