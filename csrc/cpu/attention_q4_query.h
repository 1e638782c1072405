// Queries against 4-bit caches are rounded to int8 per group of 32 values, as llama.cpp rounds the
// query to Q8_0 for the dot products of q4_0 keys: d = amax / 127, q8 = nearbyint(q / d) (all 0 when
// d == 0), and every variant and path computes with q' = q8 * d (kernels.reference.ref_round_query_q4
// the same floats). Then a key's score is sum over groups of d_k d (sum_i c_i q8_i - 8 sum_i q8_i), whole
// numbers times two scales: the AVX-512 decode kernel takes them from integer dot products (VNNI) on
// the 4-bit codes as they are stored, about a third of the float path's work per key.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/attention.h"

namespace mpt {
namespace attn_detail {

// One row's rounding: qr = q' (D floats); q8 arranged for the integer kernel, the low-nibble values
// of every group first, then the high ones (byte 16 g + j of each half: value 32 g + j, resp. 32 g + 16 + j),
// D bytes; qd[g] = d and qs[g] = sum of the group's q8 (D / 32 each).
static inline void round_query_q4(const float* q, int D, float* qr, int8_t* q8, float* qd, int32_t* qs) {
  for (int g = 0; g < D / kQ4Group; ++g) {
    const float* x = q + g * kQ4Group;
    float amax = 0.0f;
    for (int i = 0; i < kQ4Group; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    int32_t sum = 0;
    for (int i = 0; i < kQ4Group; ++i) {
      const float r = d == 0.0f ? 0.0f : std::nearbyint(x[i] / d);
      qr[g * kQ4Group + i] = r * d;
      const int8_t v = int8_t(r);
      sum += v;
      q8[(i < 16 ? 0 : D / 2) + 16 * g + (i & 15)] = v;
    }
    qd[g] = d;
    qs[g] = sum;
  }
}

// The rounded rows of n queries (n x D floats at q, rows `stride` floats apart), kept with their integer
// forms for the kernels' Row pointers.
struct Q4Queries {
  std::vector<float> q, d;
  std::vector<int8_t> q8;
  std::vector<int32_t> sum;
  void round(const float* src, int64_t n, int D) {
    const int G = D / kQ4Group;
    q.resize(size_t(n) * D), q8.resize(size_t(n) * D), d.resize(size_t(n) * G), sum.resize(size_t(n) * G);
    for (int64_t r = 0; r < n; ++r)
      round_query_q4(src + r * D, D, q.data() + r * D, q8.data() + r * D, d.data() + r * G, sum.data() + r * G);
  }
};

}  // namespace attn_detail
}  // namespace mpt
