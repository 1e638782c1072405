// CPU attention skips the cache blocks whose keys ALiBi has made negligible.
//
// A key at distance t behind the query gets the bias -slope * t. For a quantized cache its score
// has a bound that costs only the key's scales to read: |q . k| <= sum over groups of |q|_1 (group)
// x the group's largest |value| (int8: 127 s; 4-bit: 8 |d|, attention.h). The query's own key
// (distance 0) scores M0, so the row's running max ends >= M0. A block is skipped when every key
// in it has bound - slope * t < M0 - margin: each such key would enter the softmax with a weight
// below e^-margin of the largest, and with margin = 20 + ln(context) all of them together stay
// under e^-20 (2e-9) of the sum and of the largest value's contribution: below the float32
// rounding of the sums they would have joined. Steep heads then read a window of recent blocks
// instead of the whole context (the 1.3B at 2048 tokens: ~40% of its key-head pairs).
//
// int8 and 4-bit caches bound keys by their scales; float caches by KvCacheView::k_bound (each row's
// largest |value|, written with the row; without it they are never skipped: reading the keys to bound
// them would cost what the skip saves). Decode and prefill: a prefill tile skips a block when every one
// of its rows may (the tile computes them together).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/attention.h"

// Include only from attention_kernel.h: cached_score uses that file's bf16 / f16 conversions.
namespace mpt {
namespace attn_detail {

// Per query row: the threshold M0 - margin ("floor") and |q|_1 per group of the cache's scales; per
// block of the range: which rows skip it and which kv heads read it at all.
struct Pruning {
  bool on = false;
  std::vector<float> floor;   // [rows]; -inf: never skip (no ALiBi, non-finite scores)
  std::vector<float> qabs;    // [rows][bound_groups]
  std::vector<float> bmax;    // [heads][bound_groups]: a block's largest |scale|
  std::vector<uint8_t> skip;  // [blocks][rows]: 1 = the row skips the block
  std::vector<uint8_t> reads; // [blocks][heads]: 0 = every row of the head skips the block
  int64_t skipped = 0, seen = 0;  // keys x rows skipped / visited, for alibi_pruning_stats
};

// Bounds a key row has: one per 32 values for 4-bit caches (their scales), else one (int8 scale, float bound).
static inline int bound_groups(const KvCacheView& c) { return c.dtype == KvDtype::Q4 ? c.head_dim / kQ4Group : 1; }

// q . k of the cached key at slot (kv head h) as the kernels compute it, in double: the floor's M0.
static inline double cached_score(const KvCacheView& c, const float* q, int64_t slot, int h) {
  const int D = c.head_dim;
  const int64_t row = (slot * c.kv_heads + h) * D;
  double dot = 0.0;
  switch (c.dtype) {  // float caches: the values as stored
    case KvDtype::F32: {
      const float* k = static_cast<const float*>(c.k) + row;
      for (int i = 0; i < D; ++i) dot += double(q[i]) * k[i];
      return dot;
    }
    case KvDtype::BF16:
    case KvDtype::F16: {
      const uint16_t* k = static_cast<const uint16_t*>(c.k) + row;
      for (int i = 0; i < D; ++i) dot += double(q[i]) * (c.dtype == KvDtype::BF16 ? bf16_to_f32(k[i]) : f16_to_f32(k[i]));
      return dot;
    }
    default: break;
  }
  if (c.dtype == KvDtype::I8) {
    const int8_t* k = static_cast<const int8_t*>(c.k) + row;
    for (int i = 0; i < D; ++i) dot += double(q[i]) * k[i];
    return dot * c.k_scale[slot * c.kv_heads + h];
  }
  const uint8_t* k = static_cast<const uint8_t*>(c.k) + row / 2;
  const float* d = c.k_scale + row / kQ4Group;
  for (int g = 0; g < D / kQ4Group; ++g) {
    double part = 0.0;
    for (int j = 0; j < kQ4Group / 2; ++j) {
      const uint8_t b = k[g * (kQ4Group / 2) + j];
      part += double(q[g * kQ4Group + j]) * (int(b & 15) - 8) + double(q[g * kQ4Group + j + 16]) * (int(b >> 4) - 8);
    }
    dot += part * d[g];
  }
  return dot;
}

// Row r's floor and its |q| sums (times |scale| x the largest |code|) into floor[r], qabs[r * groups...]:
// the part of the plan that depends on the query only (decode_attention computes it once for a split context).
template <class RowT>
static void pruning_rows(const RowT* rows, int NR, int R, int h0, const int32_t* table, const KvCacheView& c,
                         float scale, float* floor, float* qabs) {
  const int D = c.head_dim, G = bound_groups(c), bs = c.block_size;
  // the largest |code| (times the scale), or 1 for a float cache's bound of the value itself
  const float sabs = std::fabs(scale), top = c.dtype == KvDtype::I8 ? 127.0f : c.dtype == KvDtype::Q4 ? 8.0f : 1.0f;
  for (int r = 0; r < NR; ++r) {
    const RowT& row = rows[r];
    floor[r] = -std::numeric_limits<float>::infinity();
    float* qa = qabs + size_t(r) * G;
    std::fill(qa, qa + G, 0.0f);
    if (!(row.slope > 0.0f) || !std::isfinite(row.slope)) continue;
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < D / G; ++i) qa[g] += std::fabs(row.q[g * (D / G) + i]);
    for (int g = 0; g < G; ++g) qa[g] *= sabs * top;
    const int64_t own = int64_t(table[row.pos / bs]) * bs + row.pos % bs;
    const double f = cached_score(c, row.q, own, h0 + r / R) * scale - (20.0 + std::log(double(row.pos) + 1.0));
    if (std::isfinite(f)) floor[r] = float(f);
  }
}

// Contexts shorter than this many blocks are not planned: the few blocks a steep head could skip there
// save less than the plan costs (~4 us a layer of 16 heads; a batch of short sequences pays it per sequence).
constexpr int kMinPlanBlocks = 4;

static inline bool pruning_applies(bool enabled, const KvCacheView& c) {
  return enabled && (c.dtype == KvDtype::I8 || c.dtype == KvDtype::Q4 || c.k_bound);
}

// Sets up p for rows [0, NR) (row r reads kv head h0 + r / R, its own key at its pos) and marks the
// blocks of [kbeg, kend) that each row skips, oldest first, until no row could skip a block any more
// (nearer blocks have less room). The bound of a block is taken per kv head and scale group over its
// tokens (one contiguous pass over the block's scales), not per token: a little looser, and it reads
// each scale once for every head. enabled: the caller's pruning_applies. pre_floor / pre_qabs:
// pruning_rows' results for these rows, when already computed.
template <class RowT>
static void plan_pruning(Pruning& p, bool enabled, const RowT* rows, int NR, int R, int h0, int nh, const int32_t* table,
                         const KvCacheView& c, float scale, int kbeg, int kend, const float* pre_floor = nullptr,
                         const float* pre_qabs = nullptr) {
  const int bs = c.block_size, nblocks = (kend - kbeg + bs - 1) / bs;
  // rows[NR - 1] sits last (decode: all rows share one position; prefill: rows ascend)
  p.on = enabled && nblocks > 1 && rows[NR - 1].pos + 1 >= kMinPlanBlocks * bs;
  if (!p.on) return;
  const int G = bound_groups(c), KVG = c.kv_heads * G;
  const float* bounds = c.k_bound ? c.k_bound : c.k_scale;  // a key row's largest |value| / |code| unit
  p.bmax.resize(size_t(nh) * G);
  p.skip.assign(size_t(nblocks) * NR, 0);
  p.reads.assign(size_t(nblocks) * nh, 1);
  if (pre_floor) {
    p.floor.assign(pre_floor, pre_floor + NR);
    p.qabs.assign(pre_qabs, pre_qabs + size_t(NR) * G);
  } else {
    p.floor.resize(NR), p.qabs.resize(size_t(NR) * G);
    pruning_rows(rows, NR, R, h0, table, c, scale, p.floor.data(), p.qabs.data());
  }
  bool any = false;
  for (int r = 0; r < NR && !any; ++r) any = std::isfinite(p.floor[r]);
  for (int b = 0; any && b < nblocks; ++b) {
    const int p0 = kbeg + b * bs, n = std::min(bs, kend - p0);
    // The bound of every key of the block must stay under room = floor + its least ALiBi penalty; a
    // row never skips the block with its own key (or one after it).
    auto room = [&](int r) {
      const int dist = rows[r].pos - (p0 + n - 1);
      return dist > 0 ? p.floor[r] + rows[r].slope * float(dist) : -std::numeric_limits<float>::infinity();
    };
    any = false;
    for (int r = 0; r < NR && !any; ++r) any = room(r) > 0.0f;
    if (!any) break;
    const int64_t slot0 = int64_t(table[p0 / bs]) * bs;
    float* bm = p.bmax.data();
    std::fill(bm, bm + size_t(nh) * G, 0.0f);
    for (int j = 0; j < n; ++j) {
      const float* sc = bounds + (slot0 + j) * KVG + h0 * G;
      for (int e = 0; e < nh * G; ++e) {  // a NaN scale stays (the bound, then, skips nothing)
        const float v = std::fabs(sc[e]);
        bm[e] = v > bm[e] || v != v ? v : bm[e];
      }
    }
    uint8_t* skip = p.skip.data() + size_t(b) * NR;
    for (int r = 0; r < NR; ++r) {
      const float rr = room(r);
      if (!(rr > 0.0f)) continue;
      const float* qa = p.qabs.data() + size_t(r) * G;
      const float* m = bm + size_t(r / R) * G;
      float bound = 0.0f;
      for (int g = 0; g < G; ++g) bound += qa[g] * m[g];
      skip[r] = bound < rr;
    }
    for (int i = 0; i < nh; ++i) {
      bool all = true;
      for (int r = i * R; r < (i + 1) * R && all; ++r) all = skip[r];
      p.reads[size_t(b) * nh + i] = !all;
    }
  }
}

}  // namespace attn_detail
}  // namespace mpt
