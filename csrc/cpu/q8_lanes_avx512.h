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

}  // namespace avx512_lanes
}  // namespace mpt
