// What the load-time quantizers (quant_int8.cpp, quant_search.cpp) are written with: GCC/Clang vector types of
// 8 floats (SSE code on the portable build, plain scalar code elsewhere) and an AVX2 clone of each worker, picked
// by the loader (GCC ifunc). Both files are built with -ffp-contract=off, so every clone performs the same IEEE
// operations and gives the same bits as the plain-torch references.
#pragma once

#include <cstdint>

#if defined(MPT_LITE_X86_SIMD) && MPT_LITE_X86_SIMD && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MPT_LOAD_CLONES __attribute__((target_clones("avx2", "default")))
#define MPT_INLINE inline __attribute__((always_inline))  // into each clone, with its ISA
#else
#define MPT_LOAD_CLONES
#define MPT_INLINE inline
#endif

// (helpers taking or returning these are inlined into the clones: their 32-byte vectors cross no ABI boundary)
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mpt {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

// Round half to even (as torch.round) of values within +-2^22: adding 1.5 * 2^23 rounds to an integer (IEEE,
// no fast-math), without SSE4.1's round instruction.
MPT_INLINE v8f round_even8(v8f v) {
  const v8f magic = v8f{} + 12582912.0f;
  return (v + magic) - magic;
}

}  // namespace mpt
