#include "cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace mpt {

static CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc checks XCR0 too, so these are false when the OS does not save the wide registers.
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
  f.avx512vbmi = __builtin_cpu_supports("avx512vbmi");
#endif
  return f;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  if (isa != Isa::Generic && !MPT_LITE_X86_SIMD) return false;  // variant not compiled in
  switch (isa) {
    case Isa::Generic: return true;
    case Isa::Avx2: return f.avx2 && f.fma && f.f16c;
    case Isa::Avx512:
      return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni && f.avx512bf16 &&
             isa_supported(Isa::Avx2);
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Generic;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Generic: return "generic";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

Isa isa_from_name(const std::string& name) {
  if (name == "generic") return Isa::Generic;
  if (name == "avx2") return Isa::Avx2;
  if (name == "avx512") return Isa::Avx512;
  throw std::invalid_argument("unknown kernel variant '" + name + "' (expected generic, avx2 or avx512)");
}

static std::string why_unsupported(Isa isa) {
  if (!MPT_LITE_X86_SIMD)
    return std::string("this build has only the generic kernels, not the ") + isa_name(isa) + " ones";
  return std::string("this CPU does not support the ") + isa_name(isa) + " kernels";
}

static Isa initial_isa() {
  const char* env = std::getenv("MPT_LITE_ISA");
  if (env && *env) {
    Isa isa = isa_from_name(env);
    if (!isa_supported(isa))
      throw std::invalid_argument(std::string("MPT_LITE_ISA=") + env + ": " + why_unsupported(isa));
    return isa;
  }
  return best_isa();
}

static std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

Isa current_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  if (!isa_supported(isa))
    throw std::invalid_argument(why_unsupported(isa));
  isa_slot().store(static_cast<int>(isa));
}

std::vector<std::string> supported_isa_names() {
  std::vector<std::string> out;
  for (Isa isa : {Isa::Generic, Isa::Avx2, Isa::Avx512})
    if (isa_supported(isa)) out.push_back(isa_name(isa));
  return out;
}

}  // namespace mpt
