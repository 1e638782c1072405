// The attention kernels, written once over a small set of vector primitives (`Ops`) that each
// ISA file supplies. Include only from attention_{generic,avx2,avx512}.cpp, after defining Ops in
// an anonymous namespace: the instantiations then stay private to the file compiled with that
// ISA's flags, so the linker cannot pick an AVX-512 copy for the portable path.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/attention_prefetch.h"
#include "cpu/attention_q4_query.h"
#include "cpu/exp_constants.h"
#include "cpu/prefetch.h"
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

// The vector exp of the AVX2/AVX-512 variants (cpu/exp_constants.h, cpu/vec_exp_avx512.h): within
// 2 ulp of exp.
using ::mpt::kExpPoly;
using ::mpt::kLn2Hi;
using ::mpt::kLn2Lo;
using ::mpt::kLog2e;

// Small jobs (a decode step at short context) run on the calling thread: waking the pool costs
// more than the work, and its spinning workers would take cores from torch's next matmul.
constexpr int64_t kInlineWork = int64_t(1) << 18;

template <class F>
static void run_maybe_parallel(int64_t n, int64_t work, const F& fn, int64_t inline_work = kInlineWork) {
  if (work < inline_work) fn(0, n);
  else parallel_for(n, 1, fn);
}

}  // namespace attn_detail
}  // namespace mpt

#include "cpu/alibi_pruning.h"
#include "cpu/attention_kv_write.h"

namespace mpt {
namespace attn_detail {

struct Row {
  const float* q;
  float* out;
  float slope;
  int pos;
  // 4-bit caches: q rounded (attention_q4_query.h), and its int8 form, group scales and sums
  const int8_t* q8 = nullptr;
  const float* qd = nullptr;
  const int32_t* qs = nullptr;
};

struct Scratch {
  std::vector<float> kt, vt, scores, acc, m, l;
  std::vector<float> tiles;  // a tile kernel's keys, transposed (Ops::tile_rows)
  Pruning prune;             // skipped blocks (alibi_pruning.h)
  std::vector<int> readers, next_readers;  // the kv heads that read a block, and the next one
};

// n consecutive tokens (slot0...) of kv head h as float rows in tmp (D apart); int8 rows as their
// codes (the caller applies the scales), 4-bit rows as their values. A head's rows in the cache sit a token row (KV x D
// elements) apart, so a block's rows share a few L1 sets and evict each other; rows read by many
// queries (prefill) are copied once into these contiguous ones. f16 and 4-bit rows always come this way.
template <class Ops>
static const float* packed_rows(const KvCacheView& c, bool value, int64_t slot0, int n, int h, float* tmp) {
  const int KV = c.kv_heads, D = c.head_dim;
  const int64_t st = int64_t(KV) * D, base = (slot0 * KV + h) * D;
  const void* src = value ? c.v : c.k;
  for (int j = 0; j < n; ++j) {
    float* d = tmp + int64_t(j) * D;
    const int64_t o = base + j * st;
    switch (c.dtype) {
      case KvDtype::F32: std::memcpy(d, static_cast<const float*>(src) + o, size_t(D) * 4); break;
      case KvDtype::F16: Ops::f16_to_f32(static_cast<const uint16_t*>(src) + o, d, D); break;
      case KvDtype::BF16: {
        const uint16_t* p = static_cast<const uint16_t*>(src) + o;
        for (int i = 0; i < D; ++i) d[i] = bf16_to_f32(p[i]);
        break;
      }
      case KvDtype::I8: {
        const int8_t* p = static_cast<const int8_t*>(src) + o;
        for (int i = 0; i < D; ++i) d[i] = float(p[i]);
        break;
      }
      case KvDtype::Q4: {  // codes and scales at half and 1/32 of the element offset
        const float* sc = (value ? c.v_scale : c.k_scale) + o / kQ4Group;
        Ops::dequant_q4(static_cast<const uint8_t*>(src) + o / 2, sc, d, D);
        break;
      }
    }
  }
  return tmp;
}

// Whether the variant reads this 4-bit cache's rows in registers (else through dequantized copies).
template <class Ops>
static inline bool q4_in_registers(const KvCacheView& c) {
  if constexpr (Ops::kQ4Rows) return c.dtype == KvDtype::Q4 && Ops::q4_rows_ok(c.head_dim);
  return false;
}

// The keys [slot0, slot0 + n) of kv head h against query q: sc[j] = q . k_j (int8: times k's
// scale). Keys come from packed (packed_rows) when given, else bf16 and int8 ones are widened in
// registers.
template <class Ops>
static void block_scores(const KvCacheView& c, int64_t slot0, int n, int h, const Row& row, const float* packed,
                         float* sc) {
  const float* q = row.q;
  const int KV = c.kv_heads, D = c.head_dim;
  const int64_t st = int64_t(KV) * D, base = (slot0 * KV + h) * D;
  if (packed) Ops::scores(q, packed, D, n, D, sc);
  else switch (c.dtype) {
    case KvDtype::F32: Ops::scores(q, static_cast<const float*>(c.k) + base, st, n, D, sc); break;
    case KvDtype::BF16: Ops::scores(q, static_cast<const uint16_t*>(c.k) + base, st, n, D, sc); break;
    case KvDtype::F16: break;  // always packed
    case KvDtype::Q4:  // packed unless q4_in_registers
      if constexpr (Ops::kQ4Rows)
        Ops::scores_q4(row, static_cast<const uint8_t*>(c.k) + base / 2, c.k_scale + base / kQ4Group, st / 2,
                       st / kQ4Group, n, D, sc);
      break;
    case KvDtype::I8: Ops::scores(q, static_cast<const int8_t*>(c.k) + base, st, n, D, sc); break;
  }
  if (c.dtype == KvDtype::I8) {
    const float* ks = c.k_scale + slot0 * KV + h;
    for (int j = 0; j < n; ++j) sc[j] *= ks[int64_t(j) * KV];
  }
}

// acc += sum_j p[j] v_j over the values [slot0, slot0 + n) of kv head h (p is scratch: int8 folds
// the value scales into it), from packed when given.
template <class Ops>
static void block_values(const KvCacheView& c, int64_t slot0, int n, int h, float* p, const float* packed,
                         float* acc) {
  const int KV = c.kv_heads, D = c.head_dim;
  const int64_t st = int64_t(KV) * D, base = (slot0 * KV + h) * D;
  if (c.dtype == KvDtype::I8) {
    const float* vs = c.v_scale + slot0 * KV + h;
    for (int j = 0; j < n; ++j) p[j] *= vs[int64_t(j) * KV];
  }
  if (packed) return Ops::accum(p, packed, D, n, D, acc);
  switch (c.dtype) {
    case KvDtype::F32: Ops::accum(p, static_cast<const float*>(c.v) + base, st, n, D, acc); break;
    case KvDtype::BF16: Ops::accum(p, static_cast<const uint16_t*>(c.v) + base, st, n, D, acc); break;
    case KvDtype::F16: break;  // always packed
    case KvDtype::Q4:  // packed unless q4_in_registers
      if constexpr (Ops::kQ4Rows)
        Ops::accum_q4(p, static_cast<const uint8_t*>(c.v) + base / 2, c.v_scale + base / kQ4Group, st / 2,
                      st / kQ4Group, n, D, acc);
      break;
    case KvDtype::I8: Ops::accum(p, static_cast<const int8_t*>(c.v) + base, st, n, D, acc); break;
  }
}

// The online softmax meets a block whose largest score is mx: where mx beats the running max m, the
// sum l and the unnormalised output acc (D floats) are rescaled to it (none yet: nothing to rescale).
template <class Ops>
static inline void raise_max(float& m, float& l, float* acc, float mx, int D) {
  if (mx != mx) {  // a NaN score: the row's result is NaN (and its part of a split context is not empty)
    m = l = mx;
    return;
  }
  if (!(mx > m)) return;
  if (m != -std::numeric_limits<float>::infinity()) {
    const float corr = std::exp(m - mx);
    l *= corr;
    Ops::scale(acc, corr, D);
  }
  m = mx;
}

// nh groups of R query rows of one sequence (group i: kv head h0 + i; the same ascending positions
// in every group) attend to the keys [kbeg, kend) (kbeg a multiple of the block size), one cache
// block at a time with an online softmax, every head of a block before the next block (a block's
// tokens hold all kv heads side by side: the reads stay contiguous). Per row the running max m,
// sum l and unnormalised output acc (D floats), at m/l/acc + r, r * D, rows numbered group-major.
template <class Ops>
void attend_range(const Row* rows, int R, int h0, int nh, const int32_t* table, const KvCacheView& c, float scale,
                  int kbeg, int kend, float* m, float* l, float* acc, Scratch& s, bool prune = false,
                  const float* pre_floor = nullptr, const float* pre_qabs = nullptr) {
  const int D = c.head_dim, bs = c.block_size, NR = R * nh;
  const float NEG = -std::numeric_limits<float>::infinity();
  // Rows of a head read by this many queries or more are packed first (packed_rows).
  constexpr int kPackRows = 4;
  const bool always_packed = c.dtype == KvDtype::F16 || (c.dtype == KvDtype::Q4 && !q4_in_registers<Ops>(c));
  const bool pack = always_packed || R >= kPackRows;
  bool tiles = false;  // a tile kernel takes the rows of each group (Ops::tile_rows)
  if constexpr (Ops::kTileRows) tiles = R >= kPackRows && Ops::tile_rows_ok(D);
  if (pack) s.kt.resize(size_t(bs) * D), s.vt.resize(size_t(bs) * D);
  s.scores.resize(bs);
  std::fill(m, m + NR, NEG);
  std::fill(l, l + NR, 0.0f);
  std::fill(acc, acc + size_t(NR) * D, 0.0f);
  kend = std::min(kend, rows[R - 1].pos + 1);
  Pruning& pr = s.prune;
  plan_pruning(pr, prune, rows, NR, R, h0, nh, table, c, scale, kbeg, kend, pre_floor, pre_qabs);
  // The groups (kv head h0 + i) that read block b: all, or those alibi_pruning.h keeps.
  std::vector<int>&cur = s.readers, &nxt = s.next_readers;
  auto readers = [&](int b, std::vector<int>& out) {
    out.clear();
    for (int i = 0; i < nh; ++i)
      if (!pr.on || pr.reads[size_t(b) * nh + i]) out.push_back(i);
  };
  const int nblocks = kend > kbeg ? (kend - kbeg + bs - 1) / bs : 0;
  if (nblocks) readers(0, nxt);
  for (int p0 = kbeg; p0 < kend; p0 += bs) {
    const int n = std::min(bs, kend - p0), b = (p0 - kbeg) / bs;
    std::swap(cur, nxt);
    if (b + 1 < nblocks) readers(b + 1, nxt);
    else nxt.clear();
    const int64_t slot0 = int64_t(table[p0 / bs]) * bs;
    const int64_t next0 = p0 + bs < kend ? int64_t(table[p0 / bs + 1]) * bs : -1;
    const int next_n = std::min(bs, kend - p0 - bs);  // tokens of the next block (when next0 >= 0)
    const int T = int(cur.size()), TN = int(nxt.size());
    if (pr.on)
      for (int r = 0; r < NR; ++r) {  // a tile kernel computes every row of a group it reads
        const int nv = std::max(0, std::min(n, rows[r].pos - p0 + 1));
        pr.seen += nv;
        if (pr.skip[size_t(b) * NR + r] && !(tiles && pr.reads[size_t(b) * nh + r / R])) pr.skipped += nv;
      }
    if (T == 0) {  // nothing to read here: the rows the next block's readers want, towards L2
      if (TN) prefetch_scales(c, next0, next_n);
      for (int i : nxt) prefetch_rows<Ops, 2>(c, next0, next_n, h0 + i);
      continue;
    }
    for (int t = 0; t < T; ++t) {
      const int i = cur[t], h = h0 + i;
      // Two distances: the rows read next (this block's next reader, or the next block's first one)
      // into L1, and part t of T of the next block towards L2 (prefetch_block_part). A whole block
      // ahead into L1 (the earlier single prefetch) evicts the rows in use: a head's rows of one block sit a
      // token row (2-4 KiB) apart and so fill only a few L1 sets, the same ones in every block.
      // Packed rows are read once, by the copy: hints suffice there (the plain loads of
      // kTouchAhead would stall the copy's thread on the next rows before it needs them).
      // When some heads skip the next block, the L2 prefetch takes only its readers' rows: not
      // reading the rest is the point of skipping.
      int hn = -1, n_n = n;
      int64_t slot_n = slot0;
      if (t + 1 < T) hn = h0 + cur[t + 1];
      else if (TN) hn = h0 + nxt[0], slot_n = next0, n_n = next_n;
      if (pack) {
        if (hn >= 0) prefetch_rows<Ops, 2>(c, slot_n, n_n, hn);
      } else {
        if (hn >= 0) prefetch_rows<Ops, 3>(c, slot_n, n_n, hn);
        if (TN && nh > 1) {
          if (TN == nh)
            for (int part = t * nh / T; part < (t + 1) * nh / T; ++part)
              prefetch_block_part<Ops>(c, next0, next_n, h0, nh, part);
          else {
            if (t == 0) prefetch_scales(c, next0, next_n);
            for (int u = t * TN / T; u < (t + 1) * TN / T; ++u) prefetch_rows<Ops, 2>(c, next0, next_n, h0 + nxt[u]);
          }
        }
      }
      const float *packed_keys = nullptr, *packed_values = nullptr;
      if (pack) packed_values = packed_rows<Ops>(c, true, slot0, n, h, s.vt.data());
      // 4-bit keys: the tile kernel reads them from here (it converts every other dtype itself).
      if (pack && c.dtype == KvDtype::Q4) packed_keys = packed_rows<Ops>(c, false, slot0, n, h, s.kt.data());
      // Where the variant has one, a tile kernel takes every row of the head at once (keys transposed;
      // R >= kPackRows, so the values are packed).
      if constexpr (Ops::kTileRows) {
        if (tiles) {
          Ops::tile_rows(c, slot0, n, h, p0, rows + i * R, R, scale, m + i * R, l + i * R, acc + size_t(i) * R * D,
                         packed_keys, packed_values, s);
          continue;
        }
      }
      if (pack && !packed_keys) packed_keys = packed_rows<Ops>(c, false, slot0, n, h, s.kt.data());
      for (int r = i * R; r < (i + 1) * R; ++r) {
        const Row& row = rows[r];
        const int nv = std::min(n, row.pos - p0 + 1);
        if (nv <= 0 || (pr.on && pr.skip[size_t(b) * NR + r])) continue;
        float* sc = s.scores.data();
        block_scores<Ops>(c, slot0, nv, h, row, packed_keys, sc);
        const float rel = float(p0 - row.pos);
        for (int j = 0; j < nv; ++j) sc[j] = sc[j] * scale + row.slope * (rel + float(j));
        const float mx = Ops::vmax(sc, nv);
        float* a = acc + size_t(r) * D;
        raise_max<Ops>(m[r], l[r], a, mx, D);
        l[r] += Ops::exp_sum(sc, nv, m[r]);
        block_values<Ops>(c, slot0, nv, h, sc, packed_values, a);
      }
    }
  }
}

// Query rows (queries x heads sharing a kv head) a prefill tile: every key block a tile sees is
// packed once for its rows (packed_rows), so the copy is shared by this many rows. 64 against 16:
// prefill of 512 tokens on the synthetic 1.3B 87-99 against 84-88 tok/s (docs/benchmarks.md).
constexpr int kQueryTileRows = 64;
// Decode splits a sequence's context into parts of at least this many tokens when there are too few
// sequences to keep every thread busy (flash-decoding).
constexpr int kMinSplitTokens = 256;
// Below that, or with too few parts still, a part's kv heads are shared out among the threads too; and
// a decode step runs on the pool from this much work (context x heads x head_dim): one sequence of the
// 1.3B (2048 wide) from 32 tokens. Attention of one sequence ran on one thread below 256 tokens before,
// 5-22% of a decode step of the 1.3B at 40-512 tokens (MPT_LITE_STEP_PROFILE), the other thread idle.
constexpr int64_t kDecodeInlineWork = int64_t(1) << 16;

// Tokens per decode part: whole contexts unless sequences are too few for the threads; then about
// 4 parts a thread, each a multiple of the block size.
static inline int decode_part_tokens(const AttnArgs& a, const KvCacheView& c) {
  const int bs = c.block_size;
  if (a.split_tokens > 0) return (a.split_tokens + bs - 1) / bs * bs;
  const int threads = num_threads();
  if (threads <= 1 || a.num_seqs >= 8 * threads) return std::numeric_limits<int>::max();
  int64_t total = 0;
  for (int s = 0; s < a.num_seqs; ++s) total += a.context_lens[s];
  const int64_t per = std::max<int64_t>(kMinSplitTokens, total / (4 * threads) + 1);
  return int(std::min<int64_t>((per + bs - 1) / bs * bs, std::numeric_limits<int>::max() / 2));
}

// One query per sequence; each (sequence, part of the context) is a job over every head, and the
// parts of a split context are merged by their max and sum.
template <class Ops>
void decode_attention(const AttnArgs& a, const KvCacheView& c) {
  const int H = a.num_heads, KV = c.kv_heads, G = H / KV, D = c.head_dim;
  const int part = decode_part_tokens(a, c);
  struct Item {
    int seq, kbeg, kend, slot;  // slot: index of the partial result, -1 writes out directly
    int kv0, kv1;               // the kv heads it computes
  };
  std::vector<Item> items;
  std::vector<int> first(size_t(a.num_seqs) + 1);
  int64_t work = 0;
  int partials = 0;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int ctx = a.context_lens[s];
    const int nparts = int((int64_t(ctx) + part - 1) / part);
    first[s] = int(items.size());
    work += int64_t(ctx) * H * D;
    for (int k = 0; k < nparts; ++k) {
      const int kbeg = int(int64_t(k) * part), kend = int(std::min<int64_t>(ctx, int64_t(kbeg) + part));
      items.push_back({s, kbeg, kend, nparts > 1 ? partials++ : -1, 0, KV});
    }
  }
  first[a.num_seqs] = int(items.size());
  // Too few items for the threads: each takes a share of the kv heads instead (the parts of a split context
  // write disjoint heads of their partial result).
  const int64_t threads = num_threads(), want = 2 * threads;
  if (threads > 1 && int64_t(items.size()) < want && KV > 1) {
    const int pieces = int(std::min<int64_t>(KV, (want + int64_t(items.size()) - 1) / int64_t(items.size())));
    std::vector<Item> split;
    split.reserve(items.size() * size_t(pieces));
    for (const Item& whole : items)
      for (int i = 0; i < pieces; ++i) {
        Item it = whole;
        it.kv0 = KV * i / pieces, it.kv1 = KV * (i + 1) / pieces;
        split.push_back(it);
      }
    items.swap(split);
    for (int& f : first) f *= pieces;  // each item became `pieces` in its place
  }
  const size_t rec = size_t(H) * (D + 2);  // m, l, acc of every head
  std::vector<float> partial(size_t(partials) * rec);
  // Threads claim the items one at a time, the latest parts of each context first: skipped blocks
  // (alibi_pruning.h) make a context's early parts the light ones. Each item is computed whole by
  // one thread, so results do not depend on who takes it.
  std::vector<int32_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return items[x].kbeg > items[y].kbeg; });
  const int QG = D / kQ4Group;
  Q4Queries q4;  // 4-bit caches: every query rounded once (attention_q4_query.h)
  if (c.dtype == KvDtype::Q4) q4.round(a.q, int64_t(a.num_seqs) * H, D);
  auto make_row = [&](int s, int head) {
    const size_t i = size_t(s) * H + head, off = i * D;
    Row r{a.q + off, a.out + off, a.slopes ? a.slopes[head] : 0.0f, a.context_lens[s] - 1};
    if (c.dtype == KvDtype::Q4) r.q = q4.q.data() + off, r.q8 = q4.q8.data() + off, r.qd = q4.d.data() + i * QG,
                                r.qs = q4.sum.data() + i * QG;
    return r;
  };
  const bool prune = a.slopes && pruning_applies(alibi_pruning(), c);
  // The query's part of the pruning plan, once for each split context (its parts share it).
  const int qgroups = bound_groups(c);
  std::vector<float> pre_floor, pre_qabs;
  if (prune && partials) {
    pre_floor.resize(size_t(a.num_seqs) * H), pre_qabs.resize(size_t(a.num_seqs) * H * qgroups);
    std::vector<Row> rows(H);
    for (int s = 0; s < a.num_seqs; ++s) {
      if (items[first[s]].slot < 0) continue;
      for (int head = 0; head < H; ++head) rows[head] = make_row(s, head);
      pruning_rows(rows.data(), H, G, 0, a.block_tables + size_t(s) * a.max_blocks, c, a.scale,
                   pre_floor.data() + size_t(s) * H, pre_qabs.data() + size_t(s) * H * qgroups);
    }
  }
  std::atomic<int64_t> next{0};
  const int64_t n_items = int64_t(items.size());
  run_maybe_parallel(std::min<int64_t>(num_threads(), n_items), work, [&](int64_t, int64_t) {
    thread_local Scratch scratch;
    thread_local std::vector<Row> rows;
    rows.resize(H);
    scratch.prune.skipped = scratch.prune.seen = 0;
    for (int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < n_items;) {
      const Item& it = items[order[k]];
      const int h0 = it.kv0 * G, nh = (it.kv1 - it.kv0) * G;  // its query heads h0 .. h0 + nh - 1
      for (int head = h0; head < h0 + nh; ++head) rows[head] = make_row(it.seq, head);
      float *m, *l, *acc;
      if (it.slot >= 0) {
        float* p = partial.data() + size_t(it.slot) * rec;
        m = p + h0, l = p + H + h0, acc = p + 2 * H + size_t(h0) * D;
      } else {
        scratch.m.resize(H), scratch.l.resize(H), scratch.acc.resize(size_t(H) * D);
        m = scratch.m.data(), l = scratch.l.data(), acc = scratch.acc.data();
      }
      const size_t pre = size_t(it.seq) * H + h0;
      attend_range<Ops>(rows.data() + h0, G, it.kv0, it.kv1 - it.kv0, a.block_tables + size_t(it.seq) * a.max_blocks,
                        c, a.scale, it.kbeg, it.kend, m, l, acc, scratch, prune,
                        it.slot >= 0 && prune ? pre_floor.data() + pre : nullptr,
                        it.slot >= 0 && prune ? pre_qabs.data() + pre * qgroups : nullptr);
      if (it.slot < 0)
        for (int r = 0; r < nh; ++r) {
          const float inv = 1.0f / l[r];
          for (int d = 0; d < D; ++d) rows[h0 + r].out[d] = acc[size_t(r) * D + d] * inv;
        }
    }
    if (prune) add_alibi_pruning_stats(scratch.prune.skipped, scratch.prune.seen);
  }, kDecodeInlineWork);
  if (!partials) return;
  // Merge: out = sum_k e^(m_k - M) acc_k / sum_k e^(m_k - M) l_k, M the largest m_k.
  const float NEG = -std::numeric_limits<float>::infinity();
  for (int s = 0; s < a.num_seqs; ++s) {
    const int i0 = first[s], i1 = first[s + 1];
    if (items[i0].slot < 0) continue;
    // a part split among the threads by heads is one slot on consecutive items: each slot once
    auto repeat = [&](int k) { return k > i0 && items[k].slot == items[k - 1].slot; };
    for (int head = 0; head < H; ++head) {
      float M = NEG;
      for (int k = i0; k < i1; ++k)
        if (!repeat(k)) M = std::max(M, partial[size_t(items[k].slot) * rec + head]);
      float* out = a.out + (size_t(s) * H + head) * D;
      std::fill(out, out + D, 0.0f);
      float L = 0.0f;
      for (int k = i0; k < i1; ++k) {
        if (repeat(k)) continue;
        const float* p = partial.data() + size_t(items[k].slot) * rec;
        if (p[head] == NEG) continue;  // a part with no keys (cannot happen for parts inside the context)
        const float w = std::exp(p[head] - M);
        L += w * p[H + head];
        Ops::axpy(w, p + 2 * H + size_t(head) * D, out, D);
      }
      Ops::scale(out, 1.0f / L, D);
    }
  }
}

// prefill: query_start_loc splits q into sequences, cut into tiles of query rows; each tile walks
// the key blocks it sees.
template <class Ops>
void prefill_attention(const AttnArgs& a, const KvCacheView& c) {
  const int H = a.num_heads, KV = c.kv_heads, G = H / KV, D = c.head_dim;
  const int tile = std::max(1, kQueryTileRows / G);
  struct Item {
    int seq, q0, nq, h;
    int64_t keys;  // query rows x the keys the last of them sees: the item's work, for the order
  };
  std::vector<Item> items;
  int64_t work = 0;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q0 = a.query_start_loc[s], nq = a.query_start_loc[s + 1] - q0;
    const int pos0 = a.context_lens[s] - nq;
    work += int64_t(nq) * a.context_lens[s] * H * D;
    for (int t = 0; t < nq; t += tile)
      for (int h = 0; h < KV; ++h) {
        const int n = std::min(tile, nq - t);
        items.push_back({s, q0 + t, n, h, int64_t(pos0 + t + n) * n});
      }
  }
  // Causal tiles differ in work (a prompt's last tile sees every key, its first a few): a static
  // split of the tiles in order gave the second of 2 threads ~3/4 of a prompt. Threads claim items
  // one at a time, heaviest first; each item is computed whole by one thread, so results do not
  // depend on who takes it.
  std::vector<int32_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return items[x].keys > items[y].keys; });
  Q4Queries q4;  // 4-bit caches: every query rounded once (attention_q4_query.h)
  if (c.dtype == KvDtype::Q4) q4.round(a.q, int64_t(a.query_start_loc[a.num_seqs]) * H, D);
  std::atomic<int64_t> next{0};
  const int64_t n_items = int64_t(items.size());
  const bool prune = a.slopes && pruning_applies(alibi_pruning(), c);
  // One claimer a thread (run_maybe_parallel runs a small job's one call inline, and it claims them all).
  run_maybe_parallel(std::min<int64_t>(num_threads(), n_items), work, [&](int64_t, int64_t) {
    thread_local Scratch scratch;
    std::vector<Row> rows;
    scratch.prune.skipped = scratch.prune.seen = 0;
    for (int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < n_items;) {
      const Item& it = items[order[k]];
      const int s = it.seq, q_first = a.query_start_loc[s];
      const int pos0 = a.context_lens[s] - (a.query_start_loc[s + 1] - q_first);
      rows.clear();
      for (int t = it.q0; t < it.q0 + it.nq; ++t)
        for (int g = 0; g < G; ++g) {
          const int head = it.h * G + g;
          const size_t off = (size_t(t) * H + head) * D;
          rows.push_back({(c.dtype == KvDtype::Q4 ? q4.q.data() : a.q) + off, a.out + off,
                          a.slopes ? a.slopes[head] : 0.0f, pos0 + (t - q_first)});
        }
      const int R = int(rows.size());
      scratch.m.resize(R), scratch.l.resize(R), scratch.acc.resize(size_t(R) * D);
      attend_range<Ops>(rows.data(), R, it.h, 1, a.block_tables + size_t(s) * a.max_blocks, c, a.scale, 0,
                        rows[R - 1].pos + 1, scratch.m.data(), scratch.l.data(), scratch.acc.data(), scratch, prune);
      for (int r = 0; r < R; ++r) {
        const float inv = 1.0f / scratch.l[r];
        for (int d = 0; d < D; ++d) rows[r].out[d] = scratch.acc[size_t(r) * D + d] * inv;
      }
    }
    if (prune) add_alibi_pruning_stats(scratch.prune.skipped, scratch.prune.seen);
  });
}

template <class Ops>
void paged_attention(const AttnArgs& a, const KvCacheView& c, bool decode) {
  if (decode) decode_attention<Ops>(a, c);
  else prefill_attention<Ops>(a, c);
}

// y = exp(x) with the variant's vector exp (tests compare it with torch.exp).
template <class Ops>
void vector_exp(const float* x, float* y, int64_t n) {
  std::memcpy(y, x, size_t(n) * sizeof(float));
  for (int64_t i = 0; i < n; i += 1 << 20) Ops::exp_sum(y + i, int(std::min<int64_t>(n - i, 1 << 20)), 0.0f);
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
  void vector_exp(const float* x, float* y, int64_t n) { attn_detail::vector_exp<Ops>(x, y, n); }   \
  }
