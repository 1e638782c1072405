#include "cpu/activations.h"

#include <cmath>

#include "cpu/cpu_features.h"
#include "cpu/thread_pool.h"

namespace mpt {

void gelu_inplace(float* x, int64_t n) {
  parallel_for(n, 64, [&](int64_t i0, int64_t i1) {
#if MPT_LITE_X86_SIMD
    if (current_isa() == Isa::Avx512) return gelu_avx512(x + i0, i1 - i0);
    if (current_isa() == Isa::Avx2) return gelu_avx2(x + i0, i1 - i0);
#endif
    for (int64_t i = i0; i < i1; ++i) x[i] = x[i] * 0.5f * (1.0f + std::erf(x[i] * 0.7071067811865476f));
  });
}

}  // namespace mpt
