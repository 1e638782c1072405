// y = x @ W^T for the quantized formats: the portable variant and the run-time dispatcher.
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {

void qmatmul_generic(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  const int64_t N = w.N, K = w.K;
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> row(K);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k = 0; k < K; ++k) row[k] = decode_scalar(w, n, k);
      const float rf = row_factor(w, n), b = bias ? bias[n] : 0.f;
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K;
        float acc = 0.f;
        for (int64_t k = 0; k < K; ++k) acc += xm[k] * row[k];
        y[m * N + n] = acc * rf + b;
      }
    }
  });
}

void qmatmul(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  if (M <= 0 || w.N <= 0) return;
  if (w.K == 0) {  // an empty sum: y is the bias
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < w.N; ++n) y[m * w.N + n] = bias ? bias[n] : 0.f;
    return;
  }
  switch (current_isa()) {
    case Isa::Avx512: return qmatmul_avx512(w, x, M, bias, y);
    case Isa::Avx2: return qmatmul_avx2(w, x, M, bias, y);
    case Isa::Generic: return qmatmul_generic(w, x, M, bias, y);
  }
}

}  // namespace mpt
