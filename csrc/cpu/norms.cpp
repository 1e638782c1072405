#include "cpu/norms.h"

#include <cmath>
#include <cstring>

#include "cpu/thread_pool.h"

namespace mpt {
namespace {

// sum of x[k] (P = 1) or of (x[k] - c) ^ 2 with x[k] - c in float (P = 2), in double over 8 interleaved
// partial sums (the compiler vectorises the lanes; the order within each lane is fixed, so no fast-math
// is needed). Double keeps the mean and variance correctly rounded to float, as the native step always had.
template <int P>
double lane_sum(const float* x, int64_t d, float c) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= d; k += 8)
    for (int l = 0; l < 8; ++l) {
      const double t = P == 1 ? double(x[k + l]) : double(x[k + l] - c);
      acc[l] += P == 1 ? t : t * t;
    }
  double s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; k < d; ++k) {
    const double t = P == 1 ? double(x[k]) : double(x[k] - c);
    s += P == 1 ? t : t * t;
  }
  return s;
}

}  // namespace

void layer_norm_rows(const float* x, const float* weight, const float* bias, int64_t M, int64_t d, float eps,
                     float* y) {
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* xr = x + m * d;
      float* yr = y + m * d;
      const float mu = static_cast<float>(lane_sum<1>(xr, d, 0.0f) / double(d));
      const float r = 1.0f / std::sqrt(static_cast<float>(lane_sum<2>(xr, d, mu) / double(d)) + eps);
      if (bias)
        for (int64_t k = 0; k < d; ++k) yr[k] = (xr[k] - mu) * r * weight[k] + bias[k];
      else
        for (int64_t k = 0; k < d; ++k) yr[k] = (xr[k] - mu) * r * weight[k];
    }
  });
}

void add_inplace(float* x, const float* y, int64_t n) {
  constexpr int64_t kInline = int64_t(1) << 15;  // a decode step's adds: waking the pool costs more
  if (n < kInline) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
    return;
  }
  parallel_for(n, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] += y[i];
  });
}

void copy_columns(const float* src, int64_t M, int64_t stride, int64_t col, int64_t width, float* dst) {
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) std::memcpy(dst + m * width, src + m * stride + col, size_t(width) * 4);
  });
}

}  // namespace mpt
