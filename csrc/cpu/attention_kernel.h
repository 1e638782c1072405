// The attention kernels, written once over a small set of vector primitives (`Ops`) that each
// ISA file supplies. Include only from attention_{generic,avx2,avx512}.cpp, after defining Ops in
// an anonymous namespace: the instantiations then stay private to the file compiled with that
// ISA's flags, so the linker cannot pick an AVX-512 copy for the portable path.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/attention.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace attn_detail {

// ---- portable scalar conversions (round to nearest even, as torch) ----
static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0) {
    float f = float(man) * 5.9604644775390625e-8f;  // subnormal: man * 2^-24, exact
    return sign ? -f : f;
  }
  if (exp == 31) u = sign | 0x7f800000u | (man << 13);
  else u = sign | ((exp + 112u) << 23) | (man << 13);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and above round to infinity
  if (a < 0x38800000u) {                       // below 2^-14: a half subnormal (or zero)
    float af;
    std::memcpy(&af, &a, 4);
    return sign | uint16_t(std::nearbyint(af * 16777216.0f));
  }
  a += 0xfffu + ((a >> 13) & 1u);
  return sign | uint16_t((a - 0x38000000u) >> 13);
}

// Small jobs (a decode step at short context) run on the calling thread: waking the pool costs
// more than the work, and its spinning workers would take cores from torch's next matmul.
constexpr int64_t kInlineWork = int64_t(1) << 18;

template <class F>
static void run_maybe_parallel(int64_t n, int64_t work, const F& fn) {
  if (work < kInlineWork) fn(0, n);
  else parallel_for(n, 1, fn);
}

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
            break;
          case KvDtype::BF16:
            Ops::f32_to_bf16(src, static_cast<uint16_t*>(dst) + slot * row, int(row));
            break;
          case KvDtype::F16:
            Ops::f32_to_f16(src, static_cast<uint16_t*>(dst) + slot * row, int(row));
            break;
          case KvDtype::I8: {
            float* scales = (pass ? c.v_scale : c.k_scale) + slot * KV;
            int8_t* q = static_cast<int8_t*>(dst) + slot * row;
            for (int h = 0; h < KV; ++h) scales[h] = quantize_row_i8<Ops>(src + h * D, q + h * D, D);
            break;
          }
        }
      }
    }
  };
  run_maybe_parallel(n_tokens, n_tokens * row, body);
}

struct Row {
  const float* q;
  float* out;
  float slope;
  int pos;
};

struct Scratch {
  std::vector<float> kt, vt, scores, acc, m, l;
};

// n consecutive tokens (slot0...) of kv head h as float rows; *stride is the distance between rows.
template <class Ops>
static const float* load_rows(const KvCacheView& c, bool value, int64_t slot0, int n, int h,
                              float* tmp, int64_t* stride) {
  const int KV = c.kv_heads, D = c.head_dim;
  const int64_t st = int64_t(KV) * D, base = (slot0 * KV + h) * D;
  const void* p = value ? c.v : c.k;
  if (c.dtype == KvDtype::F32) {
    *stride = st;
    return static_cast<const float*>(p) + base;
  }
  *stride = D;
  for (int j = 0; j < n; ++j) {
    switch (c.dtype) {
      case KvDtype::BF16:
        Ops::bf16_to_f32(static_cast<const uint16_t*>(p) + base + j * st, tmp + j * D, D);
        break;
      case KvDtype::F16:
        Ops::f16_to_f32(static_cast<const uint16_t*>(p) + base + j * st, tmp + j * D, D);
        break;
      case KvDtype::I8: {
        const float s = (value ? c.v_scale : c.k_scale)[(slot0 + j) * KV + h];
        Ops::i8_to_f32(static_cast<const int8_t*>(p) + base + j * st, s, tmp + j * D, D);
        break;
      }
      default: break;
    }
  }
  return tmp;
}

// R query rows (ascending positions) of one sequence attend to its keys of kv head h, one cache
// block at a time with an online softmax.
template <class Ops>
void attend_rows(const Row* rows, int R, const int32_t* table, int h, const KvCacheView& c, float scale,
                 Scratch& s) {
  const int D = c.head_dim, bs = c.block_size;
  const float NEG = -std::numeric_limits<float>::infinity();
  s.kt.resize(size_t(bs) * D);
  s.vt.resize(size_t(bs) * D);
  s.scores.resize(bs);
  s.acc.assign(size_t(R) * D, 0.0f);
  s.m.assign(R, NEG);
  s.l.assign(R, 0.0f);
  const int kend = rows[R - 1].pos + 1;
  for (int b = 0; b * bs < kend; ++b) {
    const int p0 = b * bs, n = std::min(bs, kend - p0);
    const int64_t slot0 = int64_t(table[b]) * bs;
    int64_t ks, vs;
    const float* K = load_rows<Ops>(c, false, slot0, n, h, s.kt.data(), &ks);
    const float* V = nullptr;
    for (int r = 0; r < R; ++r) {
      const Row& row = rows[r];
      const int nv = std::min(n, row.pos - p0 + 1);
      if (nv <= 0) continue;
      float* sc = s.scores.data();
      float mx = NEG;
      for (int j = 0; j < nv; ++j) {
        sc[j] = Ops::dot(row.q, K + j * ks, D) * scale + row.slope * float(p0 + j - row.pos);
        mx = std::max(mx, sc[j]);
      }
      float* acc = s.acc.data() + size_t(r) * D;
      if (mx > s.m[r]) {
        if (s.m[r] != NEG) {
          const float corr = std::exp(s.m[r] - mx);
          s.l[r] *= corr;
          Ops::scale(acc, corr, D);
        }
        s.m[r] = mx;
      }
      if (!V) V = load_rows<Ops>(c, true, slot0, n, h, s.vt.data(), &vs);
      float sum = 0.0f;
      for (int j = 0; j < nv; ++j) {
        const float p = std::exp(sc[j] - s.m[r]);
        sum += p;
        Ops::axpy(p, V + j * vs, acc, D);
      }
      s.l[r] += sum;
    }
  }
  for (int r = 0; r < R; ++r) {
    const float inv = 1.0f / s.l[r];
    const float* acc = s.acc.data() + size_t(r) * D;
    for (int d = 0; d < D; ++d) rows[r].out[d] = acc[d] * inv;
  }
}

constexpr int kQueryTile = 16;

// decode: one query per sequence; prefill: query_start_loc splits q into sequences, cut into tiles.
template <class Ops>
void paged_attention(const AttnArgs& a, const KvCacheView& c, bool decode) {
  const int H = a.num_heads, KV = c.kv_heads, G = H / KV, D = c.head_dim;
  struct Item {
    int seq, q0, nq, h;
  };
  std::vector<Item> items;
  int64_t work = 0;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q0 = decode ? s : a.query_start_loc[s];
    const int nq = decode ? 1 : a.query_start_loc[s + 1] - q0;
    work += int64_t(nq) * a.context_lens[s] * H * D;
    for (int t = 0; t < nq; t += kQueryTile)
      for (int h = 0; h < KV; ++h) items.push_back({s, q0 + t, std::min(kQueryTile, nq - t), h});
  }
  run_maybe_parallel(int64_t(items.size()), work, [&](int64_t b, int64_t e) {
    thread_local Scratch scratch;
    std::vector<Row> rows;
    for (int64_t i = b; i < e; ++i) {
      const Item& it = items[i];
      const int s = it.seq;
      const int q_first = decode ? s : a.query_start_loc[s];
      const int q_len = decode ? 1 : a.query_start_loc[s + 1] - q_first;
      const int pos0 = a.context_lens[s] - q_len;
      rows.clear();
      for (int t = it.q0; t < it.q0 + it.nq; ++t)
        for (int g = 0; g < G; ++g) {
          const int head = it.h * G + g;
          const size_t off = (size_t(t) * H + head) * D;
          rows.push_back({a.q + off, a.out + off, a.slopes ? a.slopes[head] : 0.0f, pos0 + (t - q_first)});
        }
      attend_rows<Ops>(rows.data(), int(rows.size()), a.block_tables + size_t(s) * a.max_blocks, it.h, c,
                       a.scale, scratch);
    }
  });
}

}  // namespace attn_detail
}  // namespace mpt

// Defines the variant's two entry points in namespace mpt::NS over the Ops in scope.
#define MPT_ATTENTION_ENTRY_POINTS(NS)                                                              \
  namespace mpt::NS {                                                                              \
  void write_kv_cache(const float* k, const float* v, int64_t n, const int64_t* slots,             \
                      const KvCacheView& c) {                                                      \
    attn_detail::write_kv_cache<Ops>(k, v, n, slots, c);                                           \
  }                                                                                                \
  void paged_attention(const AttnArgs& a, const KvCacheView& c, bool decode) {                     \
    attn_detail::paged_attention<Ops>(a, c, decode);                                               \
  }                                                                                                \
  }
