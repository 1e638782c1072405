// Lane helpers shared by the AVX-512 q8 kernels (quant_matmul_avx512.cpp's q8_wide and the GEMM
// tiles in quant_gemm_avx512.cpp). Both must lay out a step identically for their rows to be
// bit-identical, so they use these same functions. Include only from *_avx512.cpp files.
#pragma once
#include <immintrin.h>

#include <cstdint>

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

}  // namespace avx512_lanes
}  // namespace mpt
