#include "cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#ifndef MPT_LITE_AMX
#define MPT_LITE_AMX 0
#endif

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
#if defined(__x86_64__) && defined(__linux__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {  // leaf 7 EDX: bit 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8
    f.amx_bf16 = (d >> 22) & 1u;
    f.amx_int8 = (d >> 25) & 1u;
    f.amx_tile = (d >> 24) & 1u;
  }
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

static bool request_tile_state() {
#if MPT_LITE_AMX && defined(__x86_64__) && defined(__linux__)
  const CpuFeatures& f = cpu_features();
  if (!f.amx_tile || !f.amx_bf16 || !isa_supported(Isa::Avx512)) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // <asm/prctl.h>, Linux 5.16+
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

bool amx_supported() {
  static const bool ok = request_tile_state();
  return ok;
}

static std::atomic<bool>& amx_slot() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("MPT_LITE_AMX");
    const bool off = env && (std::string(env) == "0" || std::string(env) == "off");
    return !off && amx_supported();
  }()};
  return on;
}

bool amx_enabled() { return amx_slot().load(std::memory_order_relaxed) && current_isa() == Isa::Avx512; }

bool amx_int8_enabled() { return amx_enabled() && cpu_features().amx_int8; }

bool set_amx(bool on) {
  if (on && !amx_supported())
    throw std::invalid_argument(MPT_LITE_AMX ? "this CPU (or its operating system) does not offer AMX tiles"
                                             : "this build has no AMX kernels (the compiler lacked -mamx-tile)");
  return amx_slot().exchange(on);
}

std::vector<std::string> supported_isa_names() {
  std::vector<std::string> out;
  for (Isa isa : {Isa::Generic, Isa::Avx2, Isa::Avx512})
    if (isa_supported(isa)) out.push_back(isa_name(isa));
  return out;
}

}  // namespace mpt
