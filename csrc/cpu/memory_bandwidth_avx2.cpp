// The AVX2 read loop of measure_read_bandwidth: 4 lines (256 bytes) a step, 4 independent sums.
#include <immintrin.h>

#include "cpu/memory_bandwidth.h"

namespace mpt {

uint64_t read_lines_avx2(const uint8_t* p, int64_t n) {
  auto ld = [](const uint8_t* q) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(q)); };
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4, p += 256) {
    s0 = _mm256_add_epi64(s0, _mm256_add_epi64(ld(p), ld(p + 32)));
    s1 = _mm256_add_epi64(s1, _mm256_add_epi64(ld(p + 64), ld(p + 96)));
    s2 = _mm256_add_epi64(s2, _mm256_add_epi64(ld(p + 128), ld(p + 160)));
    s3 = _mm256_add_epi64(s3, _mm256_add_epi64(ld(p + 192), ld(p + 224)));
  }
  for (; i < n; ++i, p += 64) s0 = _mm256_add_epi64(s0, _mm256_add_epi64(ld(p), ld(p + 32)));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

}  // namespace mpt
