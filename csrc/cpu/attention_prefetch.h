// Software prefetches of cached K/V rows and scales for the attention kernels (attention_kernel.h).
// Templates over the variant's Ops: include only from attention_kernel.h, whose includers keep each
// instantiation private to the file compiled with its ISA's flags.
#pragma once
#include <cstdint>

#include "cpu/attention.h"
#include "cpu/prefetch.h"

namespace mpt {
namespace attn_detail {

// Bytes of one cached K or V row (one token, one kv head).
static inline int64_t kv_row_bytes(const KvCacheView& c) {
  switch (c.dtype) {
    case KvDtype::F32: return int64_t(c.head_dim) * 4;
    case KvDtype::I8: return c.head_dim;
    case KvDtype::Q4: return c.head_dim / 2;
    default: return int64_t(c.head_dim) * 2;
  }
}

// Asks for the K and V rows of kv head h of the tokens [slot0, slot0 + n) ahead of their use (the
// rows of one head are a token apart, too far for the hardware prefetcher). Where Ops::kTouchAhead,
// the rows wanted next in L1 (Locality 3) are read by plain loads instead of prefetch hints: on a
// Zen 3 the loads made the from-memory walk 20-30% faster than the hints, which GCC had deleted then
// (prefetch.h); with the hints kept, a Zen 4 run of the AVX2 kernel found them no better than the loads.
template <class Ops, int Locality>
static inline void prefetch_rows(const KvCacheView& c, int64_t slot0, int n, int h) {
  const int64_t row = kv_row_bytes(c), st = int64_t(c.kv_heads) * row;
  const int64_t base = (slot0 * c.kv_heads + h) * row;
  const char* k = static_cast<const char*>(c.k) + base;
  const char* v = static_cast<const char*>(c.v) + base;
  if (Ops::kTouchAhead && Locality == 3) {
    unsigned sink = 0;
    for (int j = 0; j < n; ++j)
      for (int64_t b = 0; b < row; b += 64)
        sink += *reinterpret_cast<const volatile unsigned char*>(k + j * st + b) +
                *reinterpret_cast<const volatile unsigned char*>(v + j * st + b);
    asm volatile("" : : "r"(sink));
    return;
  }
  for (int j = 0; j < n; ++j)
    for (int64_t b = 0; b < row; b += 64) {
      prefetch<Locality>(k + j * st + b);
      prefetch<Locality>(v + j * st + b);
    }
}

// Part i of nh of the K and V rows of kv heads [h0, h0 + nh) of the tokens [slot0, slot0 + n)
// towards L2. With every head (decode) a block's rows are one contiguous range, prefetched in address
// order, the way the hardware's own prefetcher streams; with fewer heads, head h0 + i's rows.
// The K and V scales of the tokens [slot0, slot0 + n) (int8 and 4-bit caches) towards L2.
static inline void prefetch_scales(const KvCacheView& c, int64_t slot0, int n) {
  if (c.dtype != KvDtype::I8 && c.dtype != KvDtype::Q4) return;
  const int64_t per_token = int64_t(c.kv_heads) * (c.dtype == KvDtype::Q4 ? c.head_dim / kQ4Group : 1);
  const char* ks = reinterpret_cast<const char*>(c.k_scale + slot0 * per_token);
  const char* vs = reinterpret_cast<const char*>(c.v_scale + slot0 * per_token);
  for (int64_t b = 0; b < int64_t(n) * per_token * 4; b += 64) {
    prefetch<2>(ks + b);
    prefetch<2>(vs + b);
  }
}

template <class Ops>
static inline void prefetch_block_part(const KvCacheView& c, int64_t slot0, int n, int h0, int nh, int i) {
  if (i == 0) prefetch_scales(c, slot0, n);
  if (nh != c.kv_heads) return prefetch_rows<Ops, 2>(c, slot0, n, h0 + i);
  const int64_t token = int64_t(c.kv_heads) * kv_row_bytes(c);
  const char* k = static_cast<const char*>(c.k) + slot0 * token;
  const char* v = static_cast<const char*>(c.v) + slot0 * token;
  const int64_t bytes = int64_t(n) * token, b0 = bytes * i / nh & ~int64_t(63), b1 = bytes * (i + 1) / nh;
  for (int64_t b = b0; b < b1; b += 64) {
    prefetch<2>(k + b);
    prefetch<2>(v + b);
  }
}

}  // namespace attn_detail
}  // namespace mpt
