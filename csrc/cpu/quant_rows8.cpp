// The rows8 layouts of int4, nf4 and int8 (quant_formats.h): 8 rows interleaved per group of 32 k, converted at
// load and back where another layout is wanted; and qmatmul's entry for them, which converts to a scratch
// copy where no kernel reads rows8.
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

constexpr int64_t kRows8PanelMinRows = 32;

void check_rows8(int64_t N) {
  if (N % 8 != 0) throw std::invalid_argument("rows8 layout: N must be a multiple of 8, got " + std::to_string(N));
}

// int4: copies 4-byte words (codes) and halves (scales) of each 8-row set into the interleaved order, or
// back (to_rows8 = false).
void convert_int4(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, int64_t group,
                  uint8_t* out_packed, uint16_t* out_scales, bool to_rows8) {
  check_rows8(N);
  const int64_t G = int4_groups(K), C = int4_groups(K, group), S = N / 8;
  parallel_for(S, 1, [&](int64_t a, int64_t b) {
    for (int64_t n8 = a; n8 < b; ++n8)
      for (int r = 0; r < 8; ++r) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t il = rows8_unit(n8, g, S, G) * 128, row = (n8 * 8 + r) * G + g;
          for (int q = 0; q < 4; ++q) {
            const int64_t a_off = row * 16 + 4 * q, b_off = il + q * 32 + r * 4;
            if (to_rows8) std::memcpy(out_packed + b_off, packed + a_off, 4);
            else std::memcpy(out_packed + a_off, packed + b_off, 4);
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const int64_t u = rows8_unit(n8, c, S, C), row = (n8 * 8 + r) * C + c;
          if (to_rows8) out_scales[u * 8 + r] = scales[row];
          else out_scales[row] = scales[u * 8 + r];
        }
      }
  });
}

void check_int8_rows8(int64_t N, int64_t K) {
  if (!int8_rows8_ok(N, K))
    throw std::invalid_argument("int8 rows8 layout: N must be a multiple of 8 and K of 32, got [" + std::to_string(N) +
                                ", " + std::to_string(K) + "]");
}

// int8 rows8: where row n's codes k 4q..4q+3 of group g lie (quant_formats.h), among S sets and G groups.
inline int64_t int8_rows8_word(int64_t n, int64_t g, int q, int64_t S, int64_t G) {
  return rows8_unit(n / 8, g, S, G) * 256 + q * 32 + (n % 8) * 4;
}

// int8: copies 4-byte words of each 8-row set into the interleaved order, or back.
void convert_int8(const int8_t* cb, int64_t N, int64_t K, int8_t* out, bool to_rows8) {
  check_int8_rows8(N, K);
  const int64_t G = K / 32, S = N / 8;
  parallel_for(S, 1, [&](int64_t a, int64_t b) {
    for (int64_t n8 = a; n8 < b; ++n8)
      for (int64_t g = 0; g < G; ++g) {
        // the group's 256-byte unit: word q of row r at q * 32 + r * 4 (int8_rows8_word, its offset taken once)
        const int64_t unit = int8_rows8_word(n8 * 8, g, 0, S, G);
        for (int r = 0; r < 8; ++r) {
          const int64_t row = (n8 * 8 + r) * K + g * 32;
          for (int q = 0; q < 8; ++q) {
            if (to_rows8) std::memcpy(out + unit + q * 32 + r * 4, cb + row + 4 * q, 4);
            else std::memcpy(out + row + 4 * q, cb + unit + q * 32 + r * 4, 4);
          }
        }
      }
  });
}

// nf4: the codes move from bitsandbytes' order (element f = n*K + k in byte f/2, high nibble when f is even)
// to int4's rows8 nibble order (low: k 4q+j, high: k 16+4q+j of a group), and the block absmax of the 8 rows
// side by side per block; or back.
void convert_nf4(const uint8_t* packed, const float* absmax, int64_t N, int64_t K, int64_t B, uint8_t* out_packed,
                 float* out_absmax, bool to_rows8) {
  check_rows8(N);
  if (!nf4_q8_ok(K, B))
    throw std::invalid_argument("nf4 rows8 layout: needs a power-of-two blocksize >= 32 that divides K");
  const int64_t G = K / 32, C = K / B, S = N / 8;
  parallel_for(S, 1, [&](int64_t a, int64_t b) {
    for (int64_t n8 = a; n8 < b; ++n8) {
      for (int r = 0; r < 8; ++r) {
        const int64_t row = n8 * 8 + r;
        for (int64_t g = 0; g < G; ++g)
          for (int q = 0; q < 4; ++q)
            for (int j = 0; j < 4; ++j) {
              const int64_t f_lo = row * K + g * 32 + 4 * q + j, f_hi = f_lo + 16;
              const int64_t il = rows8_unit(n8, g, S, G) * 128 + q * 32 + r * 4 + j;
              if (to_rows8) {
                auto nib = [&](int64_t f) { return (f & 1) ? packed[f >> 1] & 15 : packed[f >> 1] >> 4; };
                out_packed[il] = static_cast<uint8_t>(nib(f_lo) | nib(f_hi) << 4);
              } else {
                auto put = [&](int64_t f, int v) {
                  uint8_t& byte = out_packed[f >> 1];
                  byte = (f & 1) ? static_cast<uint8_t>((byte & 0xf0) | v) : static_cast<uint8_t>((byte & 15) | v << 4);
                };
                put(f_lo, packed[il] & 15);
                put(f_hi, packed[il] >> 4);
              }
            }
        for (int64_t c = 0; c < C; ++c) {
          const int64_t u = rows8_unit(n8, c, S, C);
          if (to_rows8) out_absmax[u * 8 + r] = absmax[row * C + c];
          else out_absmax[row * C + c] = absmax[u * 8 + r];
        }
      }
    }
  });
}

}  // namespace

void int4_to_rows8(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, uint8_t* out_packed,
                   uint16_t* out_scales, int64_t group) {
  convert_int4(packed, scales, N, K, group, out_packed, out_scales, true);
}

void int4_from_rows8(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, uint8_t* out_packed,
                     uint16_t* out_scales, int64_t group) {
  convert_int4(packed, scales, N, K, group, out_packed, out_scales, false);
}

void int8_to_rows8(const int8_t* cb, int64_t N, int64_t K, int8_t* out) { convert_int8(cb, N, K, out, true); }

void int8_from_rows8(const int8_t* cb, int64_t N, int64_t K, int8_t* out) { convert_int8(cb, N, K, out, false); }

void dequantize_rows_int8_rows8(const int8_t* cb, const float* scb, int64_t N, int64_t K, const int64_t* rows,
                                int64_t nrows, float* out) {
  check_int8_rows8(N, K);
  const int64_t G = K / 32, S = N / 8;
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t n = rows[i];
    const float s = scb[n];
    float* o = out + i * K;
    for (int64_t g = 0; g < G; ++g)
      for (int q = 0; q < 8; ++q) {
        const int8_t* word = cb + int8_rows8_word(n, g, q, S, G);
        for (int j = 0; j < 4; ++j) o[g * 32 + 4 * q + j] = (static_cast<float>(word[j]) * s) * (1.0f / 127.0f);
      }
  }
}

void nf4_to_rows8(const uint8_t* packed, const float* absmax, int64_t N, int64_t K, int64_t blocksize,
                  uint8_t* out_packed, float* out_absmax) {
  convert_nf4(packed, absmax, N, K, blocksize, out_packed, out_absmax, true);
}

void nf4_from_rows8(const uint8_t* packed, const float* absmax, int64_t N, int64_t K, int64_t blocksize,
                    uint8_t* out_packed, float* out_absmax) {
  convert_nf4(packed, absmax, N, K, blocksize, out_packed, out_absmax, false);
}

// qmatmul's path for a rows8 weight: the rows8 kernels for q8 activations where AVX2 (int4 / nf4) or AVX-512
// (VNNI) is the ISA; every other choice (float activations, bf16 tiles, the portable ISA, int8 on AVX2) runs
// on a scratch copy in the saved layout, correct but not fast (load() arranges rows8 only where the kernels run).
bool rows8_kernel_reads(const QWeight& w, int64_t M, bool q8, bool bf16) {
#if MPT_LITE_X86_SIMD
  return w.rows8 && q8 && !bf16 && current_isa() != Isa::Generic &&
         (w.fmt != QFormat::Int8 || current_isa() == Isa::Avx512) &&
         (current_isa() == Isa::Avx512 || M < kRows8PanelMinRows || w.fmt != QFormat::Int4 || w.group == kInt4Group);
#else
  (void)w, (void)M, (void)q8, (void)bf16;
  return false;
#endif
}

void qmatmul_rows8(const QWeight& w, const float* x, int64_t M, const float* bias, float* y, bool q8, bool bf16) {
  check_rows8(w.N);
#if MPT_LITE_X86_SIMD
  if (rows8_kernel_reads(w, M, q8, bf16)) {
    Q8Rows xq;
    quantize_q8(x, M, w.K, xq);
    // AVX-512 VNNI: one kernel for every row count (from 32 rows it beats the AVX2 panels by 1.5-2x)
    if (current_isa() == Isa::Avx512) return qmatmul_q8_rows8_avx512(w, xq, bias, y);
    // From 32 rows the panels (whose pack reads rows8 as it is) beat re-reading a group per 2 x rows.
    if (M >= kRows8PanelMinRows) return qmatmul_q8_panels_avx2(w, xq, bias, y);
    return qmatmul_q8_rows8_avx2(w, xq, bias, y);
  }
#endif
  QWeight rows = w;
  rows.rows8 = false;
  std::vector<uint8_t> packed;
  if (w.fmt == QFormat::Int8) {
    packed.resize(static_cast<size_t>(w.N * w.K));
    int8_from_rows8(reinterpret_cast<const int8_t*>(w.data), w.N, w.K, reinterpret_cast<int8_t*>(packed.data()));
    rows.data = packed.data();
    return qmatmul(rows, x, M, bias, y, q8, bf16);
  }
  if (w.fmt == QFormat::Int4) {
    const int64_t G = int4_groups(w.K);
    packed.resize(static_cast<size_t>(w.N * G * 16));
    std::vector<uint16_t> scales(static_cast<size_t>(w.N * int4_groups(w.K, w.group)));
    int4_from_rows8(w.data, w.scale16, w.N, w.K, packed.data(), scales.data(), w.group);
    rows.data = packed.data(), rows.scale16 = scales.data();
    return qmatmul(rows, x, M, bias, y, q8, bf16);
  }
  packed.resize(static_cast<size_t>(w.N * w.K / 2));
  std::vector<float> absmax(static_cast<size_t>(w.N * w.K / w.blocksize));
  nf4_from_rows8(w.data, w.scale, w.N, w.K, w.blocksize, packed.data(), absmax.data());
  rows.data = packed.data(), rows.scale = absmax.data();
  qmatmul(rows, x, M, bias, y, q8, bf16);
}

}  // namespace mpt
