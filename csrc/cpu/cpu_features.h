// Run-time CPU feature detection and the choice of kernel variant (ISA level).
#pragma once
#include <string>
#include <vector>

// 1 when the AVX2/AVX-512 variants are compiled in (CMake: x86-64 targets unless
// MPT_LITE_X86_SIMD=OFF); 0 builds the portable kernels alone, as on aarch64.
#ifndef MPT_LITE_X86_SIMD
#if defined(__x86_64__) || defined(_M_X64)
#define MPT_LITE_X86_SIMD 1
#else
#define MPT_LITE_X86_SIMD 0
#endif
#endif
#if MPT_LITE_X86_SIMD && !(defined(__x86_64__) || defined(_M_X64))
#error "MPT_LITE_X86_SIMD=1 needs an x86-64 target"
#endif

namespace mpt {

enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, avx512vbmi = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;  // CPUID only; amx_supported() also asks the OS
};

const CpuFeatures& cpu_features();
bool isa_supported(Isa isa);
Isa best_isa();
// The variant kernels use now: MPT_LITE_ISA (generic|avx2|avx512) at start-up, else the best one.
Isa current_isa();
void set_isa(Isa isa);  // throws std::invalid_argument when the CPU lacks it
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument
std::vector<std::string> supported_isa_names();

// AMX tiles (bf16 GEMM for many rows, quant_gemm_amx.cpp), beside the ISA variant rather than one more
// level of it: on top of the avx512 variant only. amx_supported(): compiled in (MPT_LITE_AMX), the CPU
// has AMX-TILE and AMX-BF16, and Linux granted this process the tile data state (arch_prctl
// ARCH_REQ_XCOMP_PERM; asked once). amx_enabled(): supported, not switched off (MPT_LITE_AMX=0 at
// start-up, set_amx(false)), and the current ISA is avx512.
bool amx_supported();
bool amx_enabled();
// amx_enabled() and the CPU has AMX-INT8: q8 matmuls of a few rows take the int8 tiles (quant_q8_amx.cpp).
bool amx_int8_enabled();
bool set_amx(bool on);  // returns the previous switch; throws std::invalid_argument when turning on an unsupported AMX

}  // namespace mpt
