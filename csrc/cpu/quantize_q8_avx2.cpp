// quantize_q8 (quant_formats.h: Q8Rows) on AVX2: the same IEEE arithmetic, 8 lanes at a time. Per block
// of 32: amax over |x| (a NaN lane is skipped: max_ps keeps its second operand when the first is NaN),
// d = amax / 127, codes round_half_even(x / d) clamped to +-127 (NaN -> 0). The division and the
// rounding are exact IEEE operations, so every code and scale equals the portable loop's.
#include <immintrin.h>

#include "cpu/quant_formats.h"

namespace mpt {

// Blocks i0 .. i1 - 1 of the flat (row, block) index over M rows of K; full blocks only (k0 + 32 <= K).
void quantize_q8_blocks_avx2(const float* x, int64_t K, int64_t KB, int64_t i0, int64_t i1, int8_t* q, float* d) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t m = i / KB, b = i % KB;
    const float* xb = x + m * K + b * 32;
    __m256 v[4], amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      amax = _mm256_max_ps(_mm256_and_ps(v[j], abs_mask), amax);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    const float dv = _mm_cvtss_f32(h) / 127.0f;
    d[i] = dv;
    int8_t* qb = q + m * KB * 32 + b * 32;
    if (!(dv > 0.f)) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb), _mm256_setzero_si256());
      continue;
    }
    const __m256 dd = _mm256_set1_ps(dv);
    __m256i c[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 r = _mm256_round_ps(_mm256_div_ps(v[j], dd), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256 cl = _mm256_min_ps(_mm256_max_ps(r, nlim), lim);
      c[j] = _mm256_cvtps_epi32(_mm256_and_ps(cl, _mm256_cmp_ps(r, r, _CMP_ORD_Q)));  // NaN -> 0
    }
    // int32 -> int8 with saturating packs (values already in range); packs work per 128-bit lane
    const __m256i w01 = _mm256_packs_epi32(c[0], c[1]), w23 = _mm256_packs_epi32(c[2], c[3]);
    const __m256i b8 = _mm256_packs_epi16(w01, w23);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb), _mm256_permutevar8x32_epi32(b8, order));
  }
}

}  // namespace mpt
