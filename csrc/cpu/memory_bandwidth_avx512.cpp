// The AVX-512 read loop of measure_read_bandwidth: 8 lines (512 bytes) a step, 4 independent sums.
#include <immintrin.h>

#include "cpu/memory_bandwidth.h"

namespace mpt {

uint64_t read_lines_avx512(const uint8_t* p, int64_t n) {
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8, p += 512) {
    s0 = _mm512_add_epi64(s0, _mm512_add_epi64(_mm512_load_si512(p), _mm512_load_si512(p + 64)));
    s1 = _mm512_add_epi64(s1, _mm512_add_epi64(_mm512_load_si512(p + 128), _mm512_load_si512(p + 192)));
    s2 = _mm512_add_epi64(s2, _mm512_add_epi64(_mm512_load_si512(p + 256), _mm512_load_si512(p + 320)));
    s3 = _mm512_add_epi64(s3, _mm512_add_epi64(_mm512_load_si512(p + 384), _mm512_load_si512(p + 448)));
  }
  for (; i < n; ++i, p += 64) s0 = _mm512_add_epi64(s0, _mm512_load_si512(p));
  return static_cast<uint64_t>(
      _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3))));
}

}  // namespace mpt
