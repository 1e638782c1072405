// Checked conversions of the arguments bindings.cpp receives: buffers come as integer addresses
// (mpt_lite/kernels checked dtype, shape, contiguity and device), sizes as integers. Every entry
// point takes them by keyword only, so a swapped pair is a TypeError; what remains checkable here
// (a null buffer that must hold elements, a negative or zero size) is a ValueError naming the
// argument.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/attention.h"
#include "cpu/quant_formats.h"

namespace mpt::bind {

// A buffer that must hold `count` elements (a null address is fine only when count is 0).
template <typename T>
T* buf(uintptr_t addr, int64_t count, const char* name) {
  if (addr == 0 && count > 0)
    throw std::invalid_argument(std::string(name) + " is a null pointer, but must hold " + std::to_string(count) +
                                " elements");
  return reinterpret_cast<T*>(addr);
}

// A buffer that may be absent (bias, slopes): null means none.
template <typename T>
T* opt(uintptr_t addr) { return reinterpret_cast<T*>(addr); }

inline int64_t dim(int64_t v, const char* name) {
  if (v < 0) throw std::invalid_argument(std::string(name) + " must be >= 0, got " + std::to_string(v));
  return v;
}

inline int64_t positive(int64_t v, const char* name) {
  if (v <= 0) throw std::invalid_argument(std::string(name) + " must be > 0, got " + std::to_string(v));
  return v;
}

inline int64_t int4_group(int64_t g) {
  if (!mpt::int4_group_ok(g))
    throw std::invalid_argument("int4 group must be 32, 64, 128 or 256 (k per scale), got " + std::to_string(g));
  return g;
}

inline int threads(int n) {
  if (n < 0) throw std::invalid_argument("num_threads must be >= 0 (0: the pool's size), got " + std::to_string(n));
  return n;
}

inline int checked_int(int64_t v, const char* name) {
  if (v < 0 || v > INT32_MAX) throw std::invalid_argument(std::string(name) + " is out of range: " + std::to_string(v));
  return static_cast<int>(v);
}

inline KvCacheView kv_cache(uintptr_t k, uintptr_t v, uintptr_t k_scale, uintptr_t v_scale, int dtype,
                            int64_t num_slots, int64_t kv_heads, int64_t head_dim, int64_t block_size,
                            uintptr_t k_bound = 0) {
  if (dtype < 0 || dtype > 4) throw std::invalid_argument("unknown KV cache dtype code " + std::to_string(dtype));
  KvCacheView c;
  c.num_slots = dim(num_slots, "num_slots");
  c.kv_heads = checked_int(positive(kv_heads, "kv_heads"), "kv_heads");
  c.head_dim = checked_int(positive(head_dim, "head_dim"), "head_dim");
  c.block_size = checked_int(positive(block_size, "block_size"), "block_size");
  c.dtype = static_cast<KvDtype>(dtype);
  const bool q4 = c.dtype == KvDtype::Q4;
  if (q4 && c.head_dim % kQ4Group)
    throw std::invalid_argument("a 4-bit KV cache needs head_dim a multiple of 32, got " + std::to_string(c.head_dim));
  const int64_t n = c.num_slots * c.kv_heads * (q4 ? c.head_dim / 2 : c.head_dim);
  c.k = buf<void>(k, n, "k_cache");
  c.v = buf<void>(v, n, "v_cache");
  if (c.dtype == KvDtype::I8 || q4) {
    const int64_t ns = c.num_slots * c.kv_heads * (q4 ? c.head_dim / kQ4Group : 1);
    c.k_scale = buf<float>(k_scale, ns, "k_scale");
    c.v_scale = buf<float>(v_scale, ns, "v_scale");
  } else if (k_scale || v_scale) {
    throw std::invalid_argument("k_scale/v_scale belong to int8 and 4-bit KV caches only");
  }
  if (k_bound) {
    if (c.dtype == KvDtype::I8 || q4) throw std::invalid_argument("k_bound belongs to float KV caches only");
    c.k_bound = buf<float>(k_bound, c.num_slots * c.kv_heads, "k_bound");
  }
  return c;
}

// The attention arguments with what the checks against a cache need (token count, head_dim).
struct Attention {
  AttnArgs a;
  int64_t num_tokens = 0;
  int head_dim = 0;
};

inline Attention attention(uintptr_t q, uintptr_t out, int64_t num_tokens, int64_t num_heads, int64_t head_dim,
                           int64_t num_seqs, uintptr_t block_tables, int64_t max_blocks, uintptr_t context_lens,
                           uintptr_t query_start_loc, uintptr_t slopes, float scale, int64_t split_tokens) {
  Attention r;
  AttnArgs& a = r.a;
  r.num_tokens = dim(num_tokens, "num_tokens");
  r.head_dim = checked_int(positive(head_dim, "head_dim"), "head_dim");
  a.num_heads = checked_int(positive(num_heads, "num_heads"), "num_heads");
  a.num_seqs = checked_int(num_seqs, "num_seqs");
  a.max_blocks = checked_int(max_blocks, "max_blocks");
  const int64_t n = num_tokens * num_heads * head_dim;
  a.q = buf<const float>(q, n, "q");
  a.out = buf<float>(out, n, "out");
  a.block_tables = buf<const int32_t>(block_tables, int64_t(a.num_seqs) * a.max_blocks, "block_tables");
  a.context_lens = buf<const int32_t>(context_lens, a.num_seqs, "context_lens");
  a.query_start_loc = opt<const int32_t>(query_start_loc);
  a.slopes = opt<const float>(slopes);
  a.scale = scale;
  a.split_tokens = checked_int(dim(split_tokens, "split_tokens"), "split_tokens");
  return r;
}

// What must agree between the attention arguments, the cache and the kind of call.
inline void check_attention(const Attention& at, const KvCacheView& c, bool decode) {
  if (at.head_dim != c.head_dim)
    throw std::invalid_argument("query head_dim " + std::to_string(at.head_dim) + " differs from the cache's " +
                                std::to_string(c.head_dim));
  if (decode && at.num_tokens != at.a.num_seqs)
    throw std::invalid_argument("decode takes one query per sequence: " + std::to_string(at.num_tokens) +
                                " queries, " + std::to_string(at.a.num_seqs) + " sequences");
  if (!decode && at.a.num_seqs > 0 && !at.a.query_start_loc)
    throw std::invalid_argument("prefill needs query_start_loc");
}

}  // namespace mpt::bind
