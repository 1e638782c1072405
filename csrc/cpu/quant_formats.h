// Quantized weight formats and the kernels over them: quantize, dequantize, y = x @ W^T (+ bias).
// W is the [N = out_features, K = in_features] weight of a Linear; x is M x K float32 row-major.
//
// Byte layouts (what is saved and reloaded; the kernels read them directly, no repacking at each call):
//
//   int8  cb  int8  [N, K]   row-major codes, q = round_half_even(w * (127 / absmax_row))
//         scb fp32  [N]      per-row absmax;  w = (q * scb) * (1/127)   (bitsandbytes CB / SCB)
//
//   nf4   packed uint8 [ceil(N*K / 2)]  the weight flattened row-major to f = n*K + k; byte f/2
//                                        holds element f in its HIGH nibble when f is even and
//                                        in its LOW nibble when f is odd (bitsandbytes order)
//         absmax fp32  [ceil(N*K / B)]  per block of B (default 64) consecutive flat elements;
//                                        w = NF4_CODE[q] * absmax[f / B]   (bitsandbytes NF4)
//
//   int4  packed uint8 [N, G*16]  G = ceil(K/32) groups of 32 per row; in group g of row n,
//                                  byte j (0..15) holds q(k = 32g + j) in its LOW nibble and
//                                  q(k = 32g + j + 16) in its HIGH nibble (ggml q4_0 order, so one
//                                  16-byte load yields k 0..15 and k 16..31 without shuffles);
//                                  padding past K holds q = 8 (zero)
//         scales fp16  [N, G]      IEEE half bits (uint16); d = half(amax / -8) where amax is the
//                                  group's value of largest magnitude, rounded to nearest even and
//                                  clamped to +-65504 before rounding (half_bits); the codes use the
//                                  rounded d: q = clamp(floor(w / d + 8.5), 0, 15); w = (q - 8) * d.
//                                  32 x 4 bits + 16 = 4.5 bits per weight (ggml Q4_0's size).
//                                  (Saves before format version 3 held fp32 scales: the Python loader
//                                  converts them, mpt_lite/hub/loading.py.)
//
//   int4, rows8 (QWeight::rows8; N a multiple of 8): the same codes and scales in the same two buffers,
//         8 rows interleaved per group so that one 32-byte load feeds 8 output rows, and the 8-row sets
//         interleaved by 4 per group so that a kernel tile of 32 output rows reads one contiguous stream of
//         codes and one of scales (what the AVX2 kernels stream best; held where they run, and saved so,
//         named in the file's metadata: format version 5; version 4 had no 4-set interleave). With
//         S = N / 8 sets, set n8 = 4t + p of tile t (ng = min(4, S - 4t) sets in it; only the last tile
//         has fewer than 4), group g of it is unit u(n8, g) = 4t * G + g * ng + p (rows8_unit) and
//           packed  byte (u(n8, g) * 128 + q * 32 + r * 4 + j) = packed[n8*8 + r][g*16 + 4q + j]
//           scales  half (u(n8, g) * 8 + r)                   = scales[n8*8 + r][g]
//         for q, j in 0..3 and r in 0..7: vector q of a group holds k 4q..4q+3 (low nibbles) and
//         16+4q..16+4q+3 (high nibbles) of the 8 rows, row r in its 32-bit lane r.
//
//   nf4, rows8 (likewise; where nf4_q8_ok): the codes in int4's rows8 order above (code q of row 8*n8 + r
//         at k = 32g + 4q' + j in the low nibble of byte u(n8, g)*128 + q'*32 + r*4 + j, k + 16 in its high
//         nibble; G = K / 32), and the absmax of block c of those rows side by side, its sets interleaved
//         the same way over the C = K / blocksize blocks:
//           absmax  float (u_C(n8, c) * 8 + r) = absmax[(n8*8 + r) * C + c],  u_C: u with C in place of G
//
//   int8, rows8 (likewise; K a multiple of 32, format version 6): the codes in the same buffer, 8 rows
//         interleaved per group of 32 k and the sets by 4 as int4's (G = K / 32), 256 bytes a unit:
//           cb  byte (u(n8, g) * 256 + q * 32 + r * 4 + j) = cb[n8*8 + r][g*32 + 4q + j]   q in 0..7
//         vector q of a group holds k 4q..4q+3 of the 8 rows, row r in its 32-bit lane r; scb unchanged.
#pragma once
#include <cstdint>
#include <vector>

namespace mpt {

// The inline helpers here are `static`: this header is included by files built with AVX2 or AVX-512
// flags as well as by the portable ones, and a shared out-of-line copy could be taken from an ISA file
// for every caller (a SIGILL on a CPU without that ISA).

// bitsandbytes' NF4 code table (bitsandbytes.functional.get_4bit_type("nf4")), bit for bit.
extern const float kNf4Code[16];

// int4's codes always come in units of kInt4Group k (the byte layouts above); the scales may cover a larger
// group of `group` k (a power of two, kInt4Group .. kInt4MaxGroup): one half per group, ceil(K / group) a row,
// in the same places (row layout [N, C]; rows8: units over the C groups, as nf4's absmax). group 64 is
// 4.25 bits per weight, 128 4.125 (docs/benchmarks.md, "int4 groups of 64 and 128").
constexpr int kInt4Group = 32;
constexpr int64_t kInt4MaxGroup = 256;
static inline int64_t int4_groups(int64_t K, int64_t group = kInt4Group) { return (K + group - 1) / group; }
static inline bool int4_group_ok(int64_t group) {
  return group >= kInt4Group && group <= kInt4MaxGroup && (group & (group - 1)) == 0;
}

// The rows8 layouts (above): 8-row sets a tile; the sets in set n8's tile, among S sets (kRows8TileSets but in
// the last tile); and the unit (8 rows x one group or block) of set n8 at step g of G steps.
constexpr int64_t kRows8TileSets = 4;
static inline int64_t rows8_tile_sets(int64_t n8, int64_t S) {
  const int64_t t0 = n8 / kRows8TileSets * kRows8TileSets;
  return S - t0 < kRows8TileSets ? S - t0 : kRows8TileSets;
}
static inline int64_t rows8_unit(int64_t n8, int64_t g, int64_t S, int64_t G) {
  const int64_t t0 = n8 / kRows8TileSets * kRows8TileSets;
  return t0 * G + g * rows8_tile_sets(n8, S) + (n8 - t0);
}

// IEEE half <-> float, portable (no F16C): exact widening; narrowing rounds to nearest even after
// clamping to the largest finite half (+-65504), with half subnormals, as torch's .to(float16) of
// the clamped value. NaN stays NaN.
static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 0x3ffu;
  uint32_t bits;
  if (e == 31) {
    bits = sign | 0x7f800000u | m << 13;
  } else if (e != 0) {
    bits = sign | (e + 112) << 23 | m << 13;
  } else {  // zero or subnormal: m * 2^-24, exact in float
    float f = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t half_bits(float f) {
  uint32_t x;
  __builtin_memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (x >= 0x477fe000u) return static_cast<uint16_t>(sign | 0x7bffu);  // >= 65504 (or rounds past it): clamp
  if (x < 0x38800000u) {  // below 2^-14: a half subnormal m * 2^-24, m = round_even(|f| * 2^24)
    if (x < 0x33000000u) return sign;  // below 2^-25: rounds to 0 (2^-25 itself is the tie, even = 0)
    const uint32_t e = x >> 23, mant = (x & 0x7fffffu) | 0x800000u, shift = 126 - e;  // |f| = mant * 2^(e-150)
    uint32_t m = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (m & 1))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  // normal: drop 13 mantissa bits, round to nearest even (a carry into the exponent is right)
  const uint32_t r = x + 0xfffu + ((x >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
}
static inline float round_to_half(float f) { return half_to_float(half_bits(f)); }

// A group's symmetric scale as int4 and int6 store it: v[0..n) is w[0..len) padded with zeros; `half` is
// half_bits(the value of largest magnitude / -levels), the first of equal magnitudes winning as in torch.argmax
// (a NaN is never larger); `inv` is 1 / the rounded scale (0 for a zero scale), the codes' divisor.
struct GroupScale {
  uint16_t half;
  float inv;
};
static inline GroupScale group_scale(const float* w, int64_t len, int64_t n, float levels, float* v) {
  float amax = 0.f, maxv = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    v[j] = j < len ? w[j] : 0.f;
    const float a = __builtin_fabsf(v[j]);
    if (a > amax) {
      amax = a;
      maxv = v[j];
    }
  }
  const uint16_t h = half_bits(maxv / -levels);
  const float d = half_to_float(h);
  return {h, d != 0.f ? 1.0f / d : 0.f};
}

void quantize_int8(const float* w, int64_t N, int64_t K, int8_t* cb, float* scb);
void dequantize_int8(const int8_t* cb, const float* scb, int64_t N, int64_t K, float* out);
// q8: quantize x to int8 per block of 32 along K (see Q8Rows) and use integer dot products (nf4:
// with its codes as int8, kNf4Int8, where nf4_q8_ok; see the end of this file).
// bf16: x and the weight as bf16 operands on AMX tiles (qgemm_bf16_amx; needs amx_enabled(), else
// std::invalid_argument); takes precedence over q8.
void matmul_int8(const float* x, int64_t M, int64_t K, const int8_t* cb, const float* scb, int64_t N,
                 const float* bias, float* y, bool q8 = false, bool bf16 = false, bool rows8 = false);

void quantize_nf4(const float* w, int64_t numel, int64_t blocksize, uint8_t* packed, float* absmax);
void dequantize_nf4(const uint8_t* packed, const float* absmax, int64_t numel, int64_t blocksize, float* out);
void matmul_nf4(const float* x, int64_t M, int64_t K, const uint8_t* packed, const float* absmax, int64_t N,
                int64_t blocksize, const float* bias, float* y);

// group: k per scale (int4_group_ok; the scales are [N, int4_groups(K, group)]).
void quantize_int4(const float* w, int64_t N, int64_t K, uint8_t* packed, uint16_t* scales, int64_t group = kInt4Group);
void dequantize_int4(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, float* out,
                     int64_t group = kInt4Group);
void matmul_int4(const float* x, int64_t M, int64_t K, const uint8_t* packed, const uint16_t* scales, int64_t N,
                 const float* bias, float* y, bool q8 = false, bool bf16 = false, bool rows8 = false,
                 int64_t group = kInt4Group);
// The rows8 layout (above) from the row layout and back; N % 8 == 0 (std::invalid_argument otherwise).
void int4_to_rows8(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, uint8_t* out_packed,
                   uint16_t* out_scales, int64_t group = kInt4Group);
void int4_from_rows8(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, uint8_t* out_packed,
                     uint16_t* out_scales, int64_t group = kInt4Group);
// int8's rows8 layout from the row layout and back; N % 8 == 0 and K % 32 == 0.
void int8_to_rows8(const int8_t* cb, int64_t N, int64_t K, int8_t* out);
void int8_from_rows8(const int8_t* cb, int64_t N, int64_t K, int8_t* out);
// dequantize_rows_int8 for codes [N, K] in the rows8 layout (the tied embedding held so: its lookups).
void dequantize_rows_int8_rows8(const int8_t* cb, const float* scb, int64_t N, int64_t K, const int64_t* rows,
                                int64_t nrows, float* out);
static inline bool int8_rows8_ok(int64_t N, int64_t K) { return N % 8 == 0 && K % 32 == 0; }
// nf4's rows8 layout from bitsandbytes' and back; N % 8 == 0 and nf4_q8_ok(K, blocksize).
void nf4_to_rows8(const uint8_t* packed, const float* absmax, int64_t N, int64_t K, int64_t blocksize,
                  uint8_t* out_packed, float* out_absmax);
void nf4_from_rows8(const uint8_t* packed, const float* absmax, int64_t N, int64_t K, int64_t blocksize,
                    uint8_t* out_packed, float* out_absmax);

// Dequantizes rows [n0, n1) of a weight into out ([n1 - n0, K] row-major); used for embedding lookups.
void dequantize_rows_int8(const int8_t* cb, const float* scb, int64_t K, const int64_t* rows, int64_t nrows, float* out);
void dequantize_rows_nf4(const uint8_t* packed, const float* absmax, int64_t K, int64_t blocksize,
                         const int64_t* rows, int64_t nrows, float* out);
void dequantize_rows_int4(const uint8_t* packed, const uint16_t* scales, int64_t K, const int64_t* rows, int64_t nrows,
                          float* out, int64_t group = kInt4Group);

// A weight view the matmul kernels share: scalar decode of one element, and the format tag.
enum class QFormat { Int8, Nf4, Int4 };
struct QWeight {
  QFormat fmt;
  int64_t N, K, blocksize;  // blocksize: nf4 only
  const uint8_t* data;      // cb / packed
  const float* scale;       // scb / absmax (int8, nf4)
  const uint16_t* scale16;  // int4's half scales [N, G]; read them through int4_scale
  bool rows8 = false;       // in the rows8 layout: only qmatmul reads it (it converts where no kernel does)
  int64_t group = kInt4Group;  // int4: k per scale (int4_group_ok)
};

// int4: the scale of the 32-k unit b of row n (row layout), widened to float.
static inline float int4_scale(const QWeight& w, int64_t n, int64_t b) {
  return half_to_float(w.scale16[n * int4_groups(w.K, w.group) + b * kInt4Group / w.group]);
}
// int4 with group > kInt4Group as the same weight with one scale per 32 k (each scale repeated), in the same
// layout (row or rows8), the scales in `scratch`: for the kernels that read 32-k scales only.
QWeight int4_with_unit_scales(const QWeight& w, std::vector<uint16_t>& scratch);

static inline float decode_scalar(const QWeight& w, int64_t n, int64_t k) {
  switch (w.fmt) {
    case QFormat::Int8:  // row scale applied after the dot product
      return static_cast<float>(reinterpret_cast<const int8_t*>(w.data)[n * w.K + k]);
    case QFormat::Nf4: {
      int64_t f = n * w.K + k;
      uint8_t b = w.data[f >> 1];
      int q = (f & 1) ? (b & 15) : (b >> 4);
      return kNf4Code[q] * w.scale[f / w.blocksize];
    }
    case QFormat::Int4: {
      int64_t G = int4_groups(w.K), g = k / kInt4Group, j = k % kInt4Group;
      uint8_t b = w.data[(n * G + g) * 16 + (j & 15)];
      int q = j < 16 ? (b & 15) : (b >> 4);
      return static_cast<float>(q - 8) * int4_scale(w, n, g);
    }
  }
  return 0.f;
}

// Per-row factor applied to the dot product (int8's scb/127; 1 for the others).
static inline float row_factor(const QWeight& w, int64_t n) {
  return w.fmt == QFormat::Int8 ? w.scale[n] * (1.0f / 127.0f) : 1.0f;
}

// x quantized ggml-q8_0 style, per row and per block b of 32 along K (K padded with zeros to KB*32):
//   d[b] = amax_b / 127;  q[k] = clamp(round_half_even(x[k] / d[b]), -127, 127)  (0 where d[b] == 0
//   or the ratio is NaN).
// Plain IEEE arithmetic (one division, one rounding), so ops.ref_quantize_q8 reproduces it exactly.
struct Q8Rows {
  int64_t M = 0, K = 0, KB = 0;
  std::vector<int8_t> q;   // [M, KB*32]
  std::vector<float> d;    // [M, KB]
};
void quantize_q8(const float* x, int64_t M, int64_t K, Q8Rows& out);
// out[m * KB + b] = factor x (the sum of block b's 32 codes of x row m): the exact integer that brings back an
// offset the AVX2 kernels add to the weight codes (int4: factor -8; nf4 looked up + 64: factor -64; int8 in the
// AVX-512 rows8 kernel, + 128: factor -128).
void q8_block_sums(const Q8Rows& x, int32_t factor, std::vector<int32_t>& out);
// AVX2: blocks i0 .. i1 - 1 (flat index m * KB + b) of x, all full (K % 32 == 0), into q / d as quantize_q8.
void quantize_q8_blocks_avx2(const float* x, int64_t K, int64_t KB, int64_t i0, int64_t i1, int8_t* q, float* d);

// Variants; each computes y = x @ W^T (+ bias). The dispatcher picks one by current_isa().
// The *_q8 ones quantize x first (Q8Rows) and sum integer products per block: int8 weights give
//   y = scb/127 * sum_b d[b] * dot(cb_b, q_b);  int4 gives  y = sum_g dw[g] * d[g] * dot(qw_g - 8, q_g).
void qmatmul_q8_generic(const QWeight& w, const Q8Rows& x, const float* bias, float* y);
void qmatmul_q8_avx2(const QWeight& w, const Q8Rows& x, const float* bias, float* y);
void qmatmul_q8_pairs_avx2(const QWeight& w, const Q8Rows& x, const float* bias, float* y);  // int4, nf4
// many x rows (qmatmul_q8_avx2 picks: int8 from 6, int4 / nf4 from 16): weights decoded into 8-row panels shared by every x row
void qmatmul_q8_panels_avx2(const QWeight& w, const Q8Rows& x, const float* bias, float* y);
// int4 / nf4 in the rows8 layout, any number of x rows (AVX2; called on AVX-512 CPUs too; no int8)
void qmatmul_q8_rows8_avx2(const QWeight& w, const Q8Rows& x, const float* bias, float* y);
// the same with AVX-512 VNNI (the same floats), and int8 in its rows8 layout
void qmatmul_q8_rows8_avx512(const QWeight& w, const Q8Rows& x, const float* bias, float* y);
void qmatmul_q8_avx512(const QWeight& w, const float* x, int64_t M, const float* bias, float* y);  // quantizes x itself
void qmatmul_generic(const QWeight& w, const float* x, int64_t M, const float* bias, float* y);
void qmatmul_avx2(const QWeight& w, const float* x, int64_t M, const float* bias, float* y);
void qmatmul_avx512(const QWeight& w, const float* x, int64_t M, const float* bias, float* y);
void qmatmul(const QWeight& w, const float* x, int64_t M, const float* bias, float* y, bool q8 = false,
             bool bf16 = false);
void qmatmul_rows8(const QWeight& w, const float* x, int64_t M, const float* bias, float* y, bool q8, bool bf16);
// Whether qmatmul_rows8 hands w (rows8) to a rows8 kernel as it is (those read int4 groups larger than 32).
bool rows8_kernel_reads(const QWeight& w, int64_t M, bool q8, bool bf16);

// ---- nf4 on the integer path (llama.cpp's IQ4_NL scheme), bitsandbytes' byte layout unchanged ----
// The 16 NF4 code values as int8: kNf4Int8[q] = round(kNf4IntMax * kNf4Code[q]). With q8 activations the
// nf4 kernels compute, per output, with exact int32 dot products per q8 block j of 32 k:
//   y = sum_{nf4 blocks b of the row} (absmax_b * (1/kNf4IntMax)) * sum_{j in b} d_j * dot(kNf4Int8[q_j], x_j)
// i.e. x @ W'^T for the weight W' = kNf4Int8[q] * (absmax * (1/kNf4IntMax)) (ops.ref_matmul_nf4 mirrors it).
// 7 bits, not 8: on AVX2 the codes + 64 (1..127) are pmaddubsw's unsigned operand, whose pair sums with
// q8 codes (at most 2 x 127 x 127) fit int16, and the +64 returns exactly as -64 x the x block's code sum;
// with 8-bit codes their signs had to move onto x first (pabsb + psignb per vector and x row). The table's
// rounding (rms 0.4% of absmax) is a ninth of NF4's own (3.6%): see docs/benchmarks.md for the model-level cost.
constexpr int kNf4IntMax = 63;
constexpr float kNf4IntScale = 1.0f / kNf4IntMax;  // absmax * kNf4IntScale: an nf4 block's integer-path scale
constexpr int kNf4CodeOffset = kNf4IntMax + 1;     // AVX2's unsigned operand: kNf4Int8 + 64, 1..127
// Only where no block straddles two rows and each holds whole q8 blocks (nf4_q8_ok); other shapes
// keep float activations.
extern const int8_t kNf4Int8[16];
static inline bool nf4_q8_ok(int64_t K, int64_t blocksize) {
  return blocksize >= 32 && (blocksize & (blocksize - 1)) == 0 && K % blocksize == 0;
}
// q8: as matmul_int8's (ignored where !nf4_q8_ok(K, blocksize)).
void matmul_nf4(const float* x, int64_t M, int64_t K, const uint8_t* packed, const float* absmax, int64_t N,
                int64_t blocksize, const float* bias, float* y, bool q8, bool bf16 = false, bool rows8 = false);

}  // namespace mpt
