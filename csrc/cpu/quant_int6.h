// int6: the 6-bit format of the tied embedding / lm_head (embedding_bits=6; llama.cpp keeps its output
// matrix at 6 bits as well). It is read by every token twice (a row lookup, the whole matrix for the logits),
// and at 4 bits it costs more quality than the rest of a 4-bit model (docs/benchmarks.md): 6 bits keep it.
//
// Byte layout (what is saved and reloaded; the kernels read it directly):
//   codes  uint8 [N, G*24]  G = ceil(K/32) groups of 32 per row; group g of row n at byte (n*G + g)*24:
//            bytes 0..15   q(k = 32g + j) & 15 in the LOW nibble and q(k = 32g + j + 16) & 15 in the HIGH
//                          nibble (int4's order: one 16-byte load yields k 0..15 and 16..31 without shuffles)
//            bytes 16..23  byte 16 + i holds q(k = 32g + i + 8s) >> 4 in bits 2s, 2s + 1, for s = 0..3 (one
//                          8-byte load shifted by 0, 2, 4, 6 puts the high bits of k 0..31 in k's byte)
//          padding past K holds q = 32 (zero)
//   scales fp16 [N, G]      IEEE half bits; d = half(amax / -32) where amax is the group's value of largest
//                          magnitude (the first of equal magnitudes); the codes use the rounded d:
//                          q = clamp(round_half_even(w * (1 / d)), -32, 31) + 32 (q = 32 where d == 0);
//                          w = (q - 32) * d.   6 x 32 + 16 = 208 bits a group: 6.5 bits per weight.
//
// matmul: x quantized to q8 blocks (Q8Rows, quantize_q8) and exact int32 dot products per group:
//   y[m, n] = sum_g d[n, g] * xd[m, g] * dot(q_g - 32, xq_g)  (+ bias[n])
// The variants (portable, AVX2, AVX-512 VNNI) compute the same integers and differ only in the order of the
// float sums; ops.ref_matmul_int6 mirrors it.
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/quant_formats.h"

namespace mpt {

constexpr int kInt6GroupBytes = 24;
static inline int64_t int6_row_bytes(int64_t K) { return int4_groups(K) * kInt6GroupBytes; }

void quantize_int6(const float* w, int64_t N, int64_t K, uint8_t* codes, uint16_t* scales);
void dequantize_int6(const uint8_t* codes, const uint16_t* scales, int64_t N, int64_t K, float* out);
void dequantize_rows_int6(const uint8_t* codes, const uint16_t* scales, int64_t K, const int64_t* rows, int64_t nrows,
                          float* out);
void matmul_int6(const float* x, int64_t M, int64_t K, const uint8_t* codes, const uint16_t* scales, int64_t N,
                 const float* bias, float* y);

// The variants matmul_int6 picks by current_isa(); rows [n0, n1) of y for every x row.
struct Int6Weight {
  int64_t N, K, G;
  const uint8_t* codes;
  const uint16_t* scales;
};
void matmul_int6_rows_generic(const Int6Weight& w, const Q8Rows& x, const float* bias, float* y, int64_t n0,
                              int64_t n1);
void matmul_int6_rows_avx2(const Int6Weight& w, const Q8Rows& x, const float* bias, float* y, int64_t n0,
                           int64_t n1);
// AVX-512 reads x in its own order (int6_x_avx512, built once per call).
struct Int6XAvx512 {
  int64_t M = 0, P = 0;        // x rows; pairs of groups
  std::vector<int8_t> q;       // [M, P, 64] codes, lane L of pair p: group 2p + L % 2, k 4 (L % 8 / 2) + 16 (L / 8)
  std::vector<int32_t> off;    // [M, P, 16] -32 x the sum of each lane's 4 codes
  std::vector<float> dg;       // [M, G] x's group scales
  std::vector<int32_t> offg;   // [M, G] -32 x each group's code sum (q8_block_sums)
};
void int6_x_avx512(const Q8Rows& x, Int6XAvx512& out);
void matmul_int6_rows_avx512(const Int6Weight& w, const Int6XAvx512& x, const float* bias, float* y, int64_t n0,
                             int64_t n1);

}  // namespace mpt
