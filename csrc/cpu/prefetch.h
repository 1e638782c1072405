// A software prefetch the compiler keeps. GCC 12 deletes a loop whose body is nothing but
// __builtin_prefetch / _mm_prefetch calls as dead code: every prefetch loop of the attention kernels
// was missing from the built extension until 2026-12-02 (objdump showed no prefetch instruction in
// them). An asm volatile statement is never deleted.
#pragma once

namespace mpt {

// Locality as __builtin_prefetch's: 3 towards L1 (x86 prefetcht0, Arm pldl1keep), 2 towards L2, 1 towards
// L3, 0 non-temporal.
template <int Locality>
static inline void prefetch(const void* p) {
  static_assert(Locality >= 0 && Locality <= 3, "prefetch: locality 0-3");
#if defined(__x86_64__) || defined(__i386__)
  const char& line = *static_cast<const char*>(p);  // an asm operand naming the address; nothing is loaded
  if constexpr (Locality == 3) asm volatile("prefetcht0 %0" : : "m"(line));
  else if constexpr (Locality == 2) asm volatile("prefetcht1 %0" : : "m"(line));
  else if constexpr (Locality == 1) asm volatile("prefetcht2 %0" : : "m"(line));
  else asm volatile("prefetchnta %0" : : "m"(line));
#elif defined(__aarch64__)
  if constexpr (Locality == 3) asm volatile("prfm pldl1keep, [%0]" : : "r"(p));
  else if constexpr (Locality == 2) asm volatile("prfm pldl2keep, [%0]" : : "r"(p));
  else if constexpr (Locality == 1) asm volatile("prfm pldl3keep, [%0]" : : "r"(p));
  else asm volatile("prfm pldl1strm, [%0]" : : "r"(p));
#else
  __builtin_prefetch(p, 0, Locality);
#endif
}

}  // namespace mpt
