// Element-wise activations of the native decode step, per ISA variant.
#pragma once
#include <cstdint>

namespace mpt {

// x = GELU(x) = x / 2 * (1 + erf(x / sqrt 2)) in place, on the pool. The avx512 variant computes erf by
// Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, as ATen's vectorised erf), as does the avx2 one; the
// portable variant by std::erf.
void gelu_inplace(float* x, int64_t n);
// Abramowitz & Stegun 7.1.26: erf(z) ~ 1 - t (a[0] + t (a[1] + ... + t a[4])) exp(-z^2), t = 1 / (1 + p z).
constexpr float kErfP = 0.3275911f;
constexpr float kErfA[5] = {0.254829592f, -0.284496736f, 1.421413741f, -1.453152027f, 1.061405429f};
void gelu_avx512(float* x, int64_t n);
void gelu_avx2(float* x, int64_t n);

}  // namespace mpt
