// Row norms, residual adds and column slices of float32 activations on the kernel pool: the native step's, and
// forward()'s on the CPU (where torch's would open OpenMP regions whose spinning workers take the
// cores the pool needs between matmuls).
#pragma once
#include <cstdint>

namespace mpt {

// y = (x - mean) / sqrt(var + eps) * weight (+ bias) over each of M rows of length d (bias may be null);
// y may be x. Mean and variance are summed in double over 8 interleaved partial sums, two passes.
void layer_norm_rows(const float* x, const float* weight, const float* bias, int64_t M, int64_t d, float eps,
                     float* y);
// x += y over n elements.
void add_inplace(float* x, const float* y, int64_t n);
// dst[m][0, width) = src[m * stride + col, + width) for M rows (a column slice made contiguous).
void copy_columns(const float* src, int64_t M, int64_t stride, int64_t col, int64_t width, float* dst);

}  // namespace mpt
