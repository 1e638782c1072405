// int6 matmul (quant_int6.h), AVX2: one group of 32 k a vector, x in Q8Rows' own order.
#include <immintrin.h>

#include <vector>

#include "cpu/quant_int6.h"

namespace mpt {

// The group's 32 codes (0..63), byte j holding k = j.
static inline __m256i int6_codes_avx2(const uint8_t* grp) {
  const __m128i nib = _mm_loadu_si128(reinterpret_cast<const __m128i*>(grp));
  const __m256i lo = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), _mm256_set1_epi8(15));
  int64_t hb;
  __builtin_memcpy(&hb, grp + 16, 8);
  const __m256i h = _mm256_srlv_epi64(_mm256_set1_epi64x(hb), _mm256_setr_epi64x(0, 2, 4, 6));
  return _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(3)), 4));
}

void matmul_int6_rows_avx2(const Int6Weight& w, const Q8Rows& x, const float* bias, float* y, int64_t n0,
                           int64_t n1) {
  const int64_t G = w.G, Kp = G * 32, M = x.M;
  const __m256i ones = _mm256_set1_epi16(1);
  // -32 x the sum of each 4 codes of x (the int32 lanes of a group's dot): brings back the codes' offset exactly
  std::vector<int32_t> off(static_cast<size_t>(M * G * 8));
  for (int64_t i = 0; i < M * G; ++i) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + i * 32));
    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(32), q), ones);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(off.data() + i * 8), _mm256_sub_epi32(_mm256_setzero_si256(), s));
  }
  constexpr int kTile = 4;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* codes = w.codes + n * G * kInt6GroupBytes;
    const uint16_t* sc = w.scales + n * G;
    for (int64_t m0 = 0; m0 < M; m0 += kTile) {
      const int mt = static_cast<int>(M - m0 < kTile ? M - m0 : kTile);
      __m256 acc[kTile];
      for (int t = 0; t < kTile; ++t) acc[t] = _mm256_setzero_ps();
      for (int64_t g = 0; g < G; ++g) {
        const __m256i c = int6_codes_avx2(codes + g * kInt6GroupBytes);
        const float dw = _cvtsh_ss(sc[g]);
        for (int t = 0; t < mt; ++t) {
          const int64_t m = m0 + t;
          const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + m * Kp + g * 32));
          const __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(c, q), ones),
                                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off.data() + (m * G + g) * 8)));
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw * x.d[m * G + g]), acc[t]);
        }
      }
      for (int t = 0; t < mt; ++t) {
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        const float s = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
        y[(m0 + t) * w.N + n] = s + (bias ? bias[n] : 0.f);
      }
    }
  }
}

}  // namespace mpt
