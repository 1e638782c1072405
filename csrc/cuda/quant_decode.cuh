// Device-side decoding of the weight formats of csrc/cpu/quant_formats.h (same bytes, same
// arithmetic: every dequantized value equals the CPU kernels' and ops.ref_dequantize_*'s bit for
// bit; products are written with __fmul_rn so nvcc never contracts them into an FMA).
#pragma once
#include "cuda/cuda_common.cuh"

namespace mpt::cuda {

enum class Fmt : int { Int8 = 0, Nf4 = 1, Int4 = 2 };
constexpr int kInt4Group = 32;

// bitsandbytes' NF4 table (the same constants as kNf4Code in quant_nf4.cpp). A global device
// array read through L1: a `constexpr` array indexed at run time would be built in every
// thread's local memory on each call. Hot loops copy it to shared memory (quant_gemv.cu).
namespace {
__device__ const float kNf4Table[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
    0.7229568362236023f, 1.0f};
}  // namespace

__device__ __forceinline__ float nf4_value(int q) { return __ldg(&kNf4Table[q & 15]); }

// What a kernel needs to read one weight [N, K]: codes, scales and (nf4) the block size.
struct QW {
  const uint8_t* data;
  const void* scale;  // float: int8 scb / nf4 absmax; IEEE half bits: int4 scales
  int64_t N, K, blocksize;
  __device__ __forceinline__ float fscale(int64_t i) const { return __ldg(static_cast<const float*>(scale) + i); }
  __device__ __forceinline__ float int4_scale(int64_t i) const {
    return __half2float(__ushort_as_half(__ldg(static_cast<const unsigned short*>(scale) + i)));
  }
};

// Element (n, k) as the matmul operand: int8 gives the raw code (its row factor scb/127 is
// applied to the dot product); nf4 and int4 give the dequantized value.
template <Fmt F>
__device__ __forceinline__ float operand(const QW& w, int64_t n, int64_t k) {
  if constexpr (F == Fmt::Int8) {
    return static_cast<float>(reinterpret_cast<const int8_t*>(w.data)[n * w.K + k]);
  } else if constexpr (F == Fmt::Nf4) {
    const int64_t f = n * w.K + k;
    const uint8_t b = w.data[f >> 1];
    return __fmul_rn(nf4_value((f & 1) ? (b & 15) : (b >> 4)), w.fscale(f / w.blocksize));
  } else {
    const int64_t G = (w.K + kInt4Group - 1) / kInt4Group, g = k / kInt4Group, j = k % kInt4Group;
    const uint8_t b = w.data[(n * G + g) * 16 + (j & 15)];
    const int q = j < 16 ? (b & 15) : (b >> 4);
    return __fmul_rn(static_cast<float>(q - 8), w.int4_scale(n * G + g));
  }
}

template <Fmt F>
__device__ __forceinline__ float row_factor(const QW& w, int64_t n) {
  if constexpr (F == Fmt::Int8) return __fmul_rn(w.fscale(n), 1.0f / 127.0f);
  else return 1.0f;
}

// The dequantized value (what ops.dequantize_* returns): int8 is (q * scb) * (1/127).
template <Fmt F>
__device__ __forceinline__ float dequant(const QW& w, int64_t n, int64_t k) {
  if constexpr (F == Fmt::Int8) return __fmul_rn(__fmul_rn(operand<F>(w, n, k), w.fscale(n)), 1.0f / 127.0f);
  else return operand<F>(w, n, k);
}

// 32 consecutive operands k = 32c .. 32c+31 of row n from 16-byte loads (the vector path; the
// caller checked alignment: int8 K % 16 == 0, nf4 K % 32 == 0 and blocksize % 32 == 0, int4
// always). Elements past K are decoded but must be multiplied by zero activations.
template <Fmt F>
__device__ __forceinline__ void operand32(const QW& w, int64_t n, int64_t c, float* out) {
  if constexpr (F == Fmt::Int8) {
    const int8_t* row = reinterpret_cast<const int8_t*>(w.data) + n * w.K;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (32 * c + 16 * h >= w.K) {  // K % 32 == 16: the second half lies in the next row
#pragma unroll
        for (int e = 0; e < 16; ++e) out[16 * h + e] = 0.f;
        continue;
      }
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(row + 32 * c + 16 * h));
      const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int e = 0; e < 16; ++e) out[16 * h + e] = static_cast<float>(static_cast<int8_t>(words[e / 4] >> (8 * (e % 4))));
    }
  } else if constexpr (F == Fmt::Nf4) {
    const int64_t f0 = n * w.K + 32 * c;
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(w.data + (f0 >> 1)));
    const float s = w.fscale(f0 / w.blocksize);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t b = (words[j / 4] >> (8 * (j % 4))) & 0xffu;
      out[2 * j] = __fmul_rn(nf4_value(b >> 4), s);
      out[2 * j + 1] = __fmul_rn(nf4_value(b & 15), s);
    }
  } else {
    const int64_t G = (w.K + kInt4Group - 1) / kInt4Group;
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(w.data + (n * G + c) * 16));
    const float d = w.int4_scale(n * G + c);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t b = (words[j / 4] >> (8 * (j % 4))) & 0xffu;
      out[j] = __fmul_rn(static_cast<float>(int(b & 15) - 8), d);
      out[j + 16] = __fmul_rn(static_cast<float>(int(b >> 4) - 8), d);
    }
  }
}

// ---- whole 32-element chunks (K % 32 == 0, 16-byte aligned codes): the GEMV's and the
// bf16-operand kernel's fast paths ----

// 2^23 + the unsigned byte `sel` of v, as a float (sel in 0..3).
__device__ __forceinline__ float byte_as_float(uint32_t v, int sel) {
  return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7650u | unsigned(sel)));
}

// The 4 weight operands of elements 4q .. 4q+3 of a 32-element chunk (codes: the chunk's bytes as
// words). int8: the signed codes; int4: code - 8; nf4: the table value (the scale comes later).
template <Fmt F>
__device__ __forceinline__ void decode4(const uint32_t* words, int q, const float* tbl, float* o) {
  if constexpr (F == Fmt::Int8) {  // chunk = 32 bytes, element e in byte e; bias the sign away
    const uint32_t v = words[q] ^ 0x80808080u;
#pragma unroll
    for (int i = 0; i < 4; ++i) o[i] = byte_as_float(v, i) - 8388736.0f;  // 2^23 + 128
  } else if constexpr (F == Fmt::Int4) {  // byte j holds element j (low nibble) and j + 16 (high)
    const uint32_t v = q < 4 ? (words[q] & 0x0F0F0F0Fu) : ((words[q - 4] >> 4) & 0x0F0F0F0Fu);
#pragma unroll
    for (int i = 0; i < 4; ++i) o[i] = byte_as_float(v, i) - 8388616.0f;  // 2^23 + 8
  } else {  // nf4: byte j holds element 2j (high nibble) and 2j + 1 (low)
    const uint32_t v = words[q / 2] >> (16 * (q % 2));
    o[0] = tbl[(v >> 4) & 15];
    o[1] = tbl[v & 15];
    o[2] = tbl[(v >> 12) & 15];
    o[3] = tbl[(v >> 8) & 15];
  }
}

template <Fmt F>
struct ChunkCodes {
  static constexpr int kWords = F == Fmt::Int8 ? 8 : 4;
  uint32_t words[kWords];
  float scale;
};

template <Fmt F>
__device__ __forceinline__ void load_chunk(const QW& w, int64_t n, int64_t c, ChunkCodes<F>& out) {
  if constexpr (F == Fmt::Int8) {
    const uint4* p = reinterpret_cast<const uint4*>(w.data + n * w.K + 32 * c);
    const uint4 a = __ldg(p), b = __ldg(p + 1);
    out.words[0] = a.x, out.words[1] = a.y, out.words[2] = a.z, out.words[3] = a.w;
    out.words[4] = b.x, out.words[5] = b.y, out.words[6] = b.z, out.words[7] = b.w;
    out.scale = 1.f;
  } else if constexpr (F == Fmt::Nf4) {
    const int64_t f0 = n * w.K + 32 * c;
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(w.data + (f0 >> 1)));
    out.words[0] = a.x, out.words[1] = a.y, out.words[2] = a.z, out.words[3] = a.w;
    out.scale = w.fscale(f0 / w.blocksize);
  } else {
    const int64_t g = n * (w.K / kInt4Group) + c;
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(w.data + g * 16));
    out.words[0] = a.x, out.words[1] = a.y, out.words[2] = a.z, out.words[3] = a.w;
    out.scale = w.int4_scale(g);
  }
}

}  // namespace mpt::cuda
