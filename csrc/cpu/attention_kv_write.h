// Writing new K/V rows into the paged cache (every dtype), for the attention kernels (attention_kernel.h).
// Templates over the variant's Ops: include only from attention_kernel.h, after run_maybe_parallel.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu/attention.h"

namespace mpt {
namespace attn_detail {

// int8 K/V: s = absmax / 127, q = round(x / s); all-zero rows store s = 0 and zeros.
template <class Ops>
static inline float quantize_row_i8(const float* x, int8_t* q, int n) {
  float s = Ops::absmax(x, n) / 127.0f;
  if (s == 0.0f) {
    std::memset(q, 0, size_t(n));
    return 0.0f;
  }
  Ops::quantize_i8(x, s, q, n);
  return s;
}

// 4-bit K/V, one group of 32 values (attention.h): d = m / -8 for m the value of largest magnitude (the
// first of equals), codes min(15, floor(x / d + 8.5)); a group of zeros stores d = 0 and codes 8. A
// division, not x * (1 / d): the reference (kernels/reference.py) computes the same floats. The portable
// variant's; the vector ones (Ops::quantize_q4) compute the same floats.
static inline float quantize_group_q4(const float* x, uint8_t* q) {
  float amax = 0.0f, m = 0.0f;
  for (int i = 0; i < kQ4Group; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), m = x[i];
  const float d = m / -8.0f;
  uint8_t c[kQ4Group];
  for (int i = 0; i < kQ4Group; ++i)
    c[i] = d == 0.0f ? 8 : uint8_t(std::min(15.0f, std::floor(x[i] / d + 8.5f)));
  for (int j = 0; j < kQ4Group / 2; ++j) q[j] = uint8_t(c[j] | (c[j + kQ4Group / 2] << 4));
  return d;
}

// Float caches' optional key bounds (KvCacheView::k_bound): each row's largest |x| (NaN if it holds a NaN),
// times `up` so that it also covers the row as rounded to bf16 / f16 (relative error <= 2^-9), and infinite
// above `finite` (f16 rounds those to inf).
constexpr float kRoundedUp = 1.0f + 1.0f / 128;
static inline void write_bounds(const float* src, float* bound, int KV, int D, float up,
                                float finite = std::numeric_limits<float>::max()) {
  for (int h = 0; h < KV; ++h) {
    float m = 0.0f;
    for (int i = 0; i < D; ++i) {
      const float a = std::fabs(src[h * D + i]);
      m = a > m || a != a ? a : m;
    }
    m *= up;
    bound[h] = m > finite ? std::numeric_limits<float>::infinity() : m;
  }
}

template <class Ops>
void write_kv_cache(const float* k, const float* v, int64_t n_tokens, const int64_t* slots,
                    const KvCacheView& c) {
  const int KV = c.kv_heads, D = c.head_dim;
  const int64_t row = int64_t(KV) * D;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      for (int pass = 0; pass < 2; ++pass) {
        const float* src = (pass ? v : k) + t * row;
        void* dst = pass ? c.v : c.k;
        switch (c.dtype) {
          case KvDtype::F32:
            std::memcpy(static_cast<float*>(dst) + slot * row, src, size_t(row) * 4);
            if (c.k_bound && !pass) write_bounds(src, c.k_bound + slot * KV, KV, D, 1.0f);
            break;
          case KvDtype::BF16:
            Ops::f32_to_bf16(src, static_cast<uint16_t*>(dst) + slot * row, int(row));
            if (c.k_bound && !pass) write_bounds(src, c.k_bound + slot * KV, KV, D, kRoundedUp);
            break;
          case KvDtype::F16:
            Ops::f32_to_f16(src, static_cast<uint16_t*>(dst) + slot * row, int(row));
            if (c.k_bound && !pass) write_bounds(src, c.k_bound + slot * KV, KV, D, kRoundedUp, 65504.0f);
            break;
          case KvDtype::I8: {
            float* scales = (pass ? c.v_scale : c.k_scale) + slot * KV;
            int8_t* q = static_cast<int8_t*>(dst) + slot * row;
            for (int h = 0; h < KV; ++h) scales[h] = quantize_row_i8<Ops>(src + h * D, q + h * D, D);
            break;
          }
          case KvDtype::Q4: {
            const int groups = int(row / kQ4Group);
            float* scales = (pass ? c.v_scale : c.k_scale) + slot * groups;
            uint8_t* q = static_cast<uint8_t*>(dst) + slot * (row / 2);
            for (int g = 0; g < groups; ++g) scales[g] = Ops::quantize_q4(src + g * kQ4Group, q + g * (kQ4Group / 2));
            break;
          }
        }
      }
    }
  };
  run_maybe_parallel(n_tokens, n_tokens * row, body);
}

}  // namespace attn_detail
}  // namespace mpt
