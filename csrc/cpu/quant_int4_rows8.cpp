// int4's rows8 layout (quant_formats.h): 8 rows interleaved per group of 32 k, converted at load and back
// at save; and qmatmul's entry for it, which converts to a scratch copy where no kernel reads rows8.
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
  if (N % 8 != 0) throw std::invalid_argument("int4 rows8 layout: N must be a multiple of 8, got " + std::to_string(N));
}

// to_rows8: copies 4-byte words (codes) and halves (scales) of each 8-row group into the interleaved order,
// or back (to_rows8 = false).
void convert(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, uint8_t* out_packed,
             uint16_t* out_scales, bool to_rows8) {
  check_rows8(N);
  const int64_t G = int4_groups(K);
  parallel_for(N / 8, 1, [&](int64_t a, int64_t b) {
    for (int64_t n8 = a; n8 < b; ++n8)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t il = (n8 * G + g) * 128;
        for (int r = 0; r < 8; ++r) {
          const int64_t row = (n8 * 8 + r) * G + g;
          for (int q = 0; q < 4; ++q) {
            const int64_t a_off = row * 16 + 4 * q, b_off = il + q * 32 + r * 4;
            if (to_rows8) std::memcpy(out_packed + b_off, packed + a_off, 4);
            else std::memcpy(out_packed + a_off, packed + b_off, 4);
          }
          if (to_rows8) out_scales[(n8 * G + g) * 8 + r] = scales[row];
          else out_scales[row] = scales[(n8 * G + g) * 8 + r];
        }
      }
  });
}

}  // namespace

void int4_to_rows8(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, uint8_t* out_packed,
                   uint16_t* out_scales) {
  convert(packed, scales, N, K, out_packed, out_scales, true);
}

void int4_from_rows8(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, uint8_t* out_packed,
                     uint16_t* out_scales) {
  convert(packed, scales, N, K, out_packed, out_scales, false);
}

// qmatmul's path for a rows8 weight: the rows8 kernel for q8 activations where AVX2 is the ISA or above
// (AVX-512 CPUs run it too); every other choice (float activations, bf16 tiles, the portable ISA) runs on a
// scratch copy in the row layout, correct but not fast (load() arranges rows8 only where the kernel runs).
void qmatmul_int4_rows8(const QWeight& w, const float* x, int64_t M, const float* bias, float* y, bool q8, bool bf16) {
  check_rows8(w.N);
#if MPT_LITE_X86_SIMD
  if (q8 && !bf16 && current_isa() != Isa::Generic) {
    Q8Rows xq;
    quantize_q8(x, M, w.K, xq);
    // From 32 rows the panels (whose pack reads rows8 as it is) beat re-reading a group per 2 x rows.
    if (M >= kRows8PanelMinRows) return qmatmul_q8_panels_avx2(w, xq, bias, y);
    return qmatmul_q8_rows8_avx2(w, xq, bias, y);
  }
#endif
  const int64_t G = int4_groups(w.K);
  std::vector<uint8_t> packed(static_cast<size_t>(w.N * G * 16));
  std::vector<uint16_t> scales(static_cast<size_t>(w.N * G));
  int4_from_rows8(w.data, w.scale16, w.N, w.K, packed.data(), scales.data());
  QWeight rows = w;
  rows.rows8 = false, rows.data = packed.data(), rows.scale16 = scales.data();
  qmatmul(rows, x, M, bias, y, q8, bf16);
}

}  // namespace mpt
