// y = x @ W^T for the quantized formats: the portable variant and the run-time dispatcher.
#include <cmath>
#include <stdexcept>
#include <algorithm>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/quant_formats.h"
#include "cpu/quant_gemm.h"
#include "cpu/thread_pool.h"

namespace mpt {

void qmatmul_generic(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  const int64_t N = w.N, K = w.K;
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> row(K);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k = 0; k < K; ++k) row[k] = decode_scalar(w, n, k);
      const float rf = row_factor(w, n), b = bias ? bias[n] : 0.f;
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * K;
        float acc = 0.f;
        for (int64_t k = 0; k < K; ++k) acc += xm[k] * row[k];
        y[m * N + n] = acc * rf + b;
      }
    }
  });
}

void quantize_q8(const float* x, int64_t M, int64_t K, Q8Rows& out) {
  const int64_t KB = (K + 31) / 32, Kp = KB * 32;
  out.M = M, out.K = K, out.KB = KB;
  out.q.assign(static_cast<size_t>(M * Kp), 0);
  out.d.assign(static_cast<size_t>(M * KB), 0.f);
#if MPT_LITE_X86_SIMD
  if (K % 32 == 0 && current_isa() != Isa::Generic) {  // every block full: 8 lanes at a time, the same codes
    parallel_for(M * KB, 1, [&](int64_t i0, int64_t i1) {
      quantize_q8_blocks_avx2(x, K, KB, i0, i1, out.q.data(), out.d.data());
    });
    return;
  }
#endif
  parallel_for(M * KB, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = i / KB, b = i % KB, k0 = b * 32, k1 = std::min(K, k0 + 32);
      const float* xr = x + m * K;
      // Written without fmax / nearbyint library calls (this file is built for the baseline ISA, where
      // they are not inlined): a NaN is never greater, so it is skipped as std::fmax skips it, and
      // adding and removing 1.5 * 2^23 rounds |r| < 2^22 half to even, as nearbyint does.
      float amax = 0.f;
      for (int64_t k = k0; k < k1; ++k) {
        const float a = std::fabs(xr[k]);
        amax = a > amax ? a : amax;
      }
      const float d = amax / 127.0f;
      int8_t* q = out.q.data() + m * Kp + k0;
      if (d > 0.f)
        for (int64_t k = k0; k < k1; ++k) {
          const float r = (xr[k] / d + 12582912.0f) - 12582912.0f;  // |x| <= amax: |r| <= 127 save for NaN
          const int v = r == r ? static_cast<int>(r < -127.f ? -127.f : r > 127.f ? 127.f : r) : 0;
          q[k - k0] = static_cast<int8_t>(v);
        }
      out.d[i] = d;
    }
  });
}

void qmatmul_q8_generic(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  const int64_t N = w.N, K = w.K, KB = x.KB, Kp = KB * 32, M = x.M;
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<int8_t> row(static_cast<size_t>(Kp), 0);  // weight codes, int4 already minus 8
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k = 0; k < K; ++k) {
        if (w.fmt == QFormat::Nf4) {  // bitsandbytes order: the even flat element in the high nibble
          const int64_t f = n * K + k;
          row[k] = kNf4Int8[(f & 1) ? (w.data[f >> 1] & 15) : (w.data[f >> 1] >> 4)];
        } else if (w.fmt == QFormat::Int8) {
          row[k] = reinterpret_cast<const int8_t*>(w.data)[n * K + k];
        } else {
          const uint8_t b = w.data[(n * KB + k / 32) * 16 + (k & 15)];
          row[k] = static_cast<int8_t>(((k & 16) ? b >> 4 : b & 15) - 8);
        }
      }
      for (int64_t m = 0; m < M; ++m) {
        const int8_t* q = x.q.data() + m * Kp;
        float acc = 0.f;
        for (int64_t b = 0; b < KB; ++b) {
          int32_t sumi = 0;
          for (int j = 0; j < 32; ++j) sumi += int32_t(row[b * 32 + j]) * q[b * 32 + j];
          const float dw = w.fmt == QFormat::Int8  ? 1.f
                           : w.fmt == QFormat::Nf4 ? w.scale[(n * K + b * 32) / w.blocksize] * kNf4IntScale
                                                   : int4_scale(w, n, b);
          acc += dw * x.d[m * KB + b] * static_cast<float>(sumi);
        }
        y[m * N + n] = acc * row_factor(w, n) + (bias ? bias[n] : 0.f);
      }
    }
  });
}

void q8_block_sums(const Q8Rows& x, int32_t factor, std::vector<int32_t>& out) {
  out.resize(static_cast<size_t>(x.M * x.KB));
  auto sums = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int8_t* q = x.q.data() + i * 32;
      int32_t s = 0;
      for (int j = 0; j < 32; ++j) s += q[j];
      out[static_cast<size_t>(i)] = factor * s;
    }
  };
  // A prompt's M x K bytes are worth the threads; a decode step's few rows are not worth waking them.
  if (x.M * x.KB >= 4096) return parallel_for(x.M * x.KB, 1, sums);
  sums(0, x.M * x.KB);
}

void qmatmul(const QWeight& w, const float* x, int64_t M, const float* bias, float* y, bool q8, bool bf16) {
  if (bf16 && !amx_enabled())
    throw std::invalid_argument("bf16 operands: the AMX tiles are not enabled (kernels.amx_enabled())");
  if (M <= 0 || w.N <= 0) return;
  if (w.K == 0) {  // an empty sum: y is the bias
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < w.N; ++n) y[m * w.N + n] = bias ? bias[n] : 0.f;
    return;
  }
  // int4 scales over groups larger than 32 k: the portable kernels and the rows8 kernels read them; the
  // others get one scale per 32 k, repeated into a scratch copy (a prompt's matmul is compute-bound).
  const bool portable = current_isa() == Isa::Generic && !bf16 && !amx_int8_enabled();
  if (w.fmt == QFormat::Int4 && w.group != kInt4Group && !portable && !rows8_kernel_reads(w, M, q8, bf16)) {
    std::vector<uint16_t> unit_scales;
    return qmatmul(int4_with_unit_scales(w, unit_scales), x, M, bias, y, q8, bf16);
  }
  if (w.rows8) return qmatmul_rows8(w, x, M, bias, y, q8, bf16);
#if MPT_LITE_AMX
  if (bf16) return qgemm_bf16_amx(w, x, M, bias, y);
#endif
  if (q8) {
    if (w.fmt == QFormat::Nf4 && !nf4_q8_ok(w.K, w.blocksize))
      throw std::invalid_argument("nf4 q8 path: needs a power-of-two blocksize >= 32 that divides K");
#if MPT_LITE_AMX
    // A few rows (decode batches): AMX-INT8 tiles, where the vpdpbusd kernels would be compute-bound.
    if (M >= amx_q8_min_rows(w.fmt) && M <= kAmxQ8MaxRows && amx_int8_enabled()) return qmatmul_q8_amx(w, x, M, bias, y);
#endif
#if MPT_LITE_X86_SIMD
    // Many rows: register-tiled integer GEMM (quantizes x itself); int8 / int4 rows equal q8_wide's.
    if (M > kGemmMinRows && current_isa() == Isa::Avx512) return qgemm_q8_avx512(w, x, M, bias, y);
    // AVX2: many rows take the panels (quant_q8_panels_avx2.cpp; int8 from 6 rows, int4 / nf4 from 16), fewer
    // rows the pair kernel (int4, nf4) or q8_rows (int8); quant_q8_avx2 picks.
#endif
#if MPT_LITE_X86_SIMD
    if (current_isa() == Isa::Avx512) return qmatmul_q8_avx512(w, x, M, bias, y);
#endif
    Q8Rows xq;
    quantize_q8(x, M, w.K, xq);
    switch (current_isa()) {
#if MPT_LITE_X86_SIMD
      case Isa::Avx2: return qmatmul_q8_avx2(w, xq, bias, y);
#endif
      default: return qmatmul_q8_generic(w, xq, bias, y);
    }
  }
  switch (current_isa()) {
#if MPT_LITE_X86_SIMD
    case Isa::Avx512: return qmatmul_avx512(w, x, M, bias, y);
    case Isa::Avx2: return qmatmul_avx2(w, x, M, bias, y);
#endif
    default: return qmatmul_generic(w, x, M, bias, y);
  }
}

}  // namespace mpt
