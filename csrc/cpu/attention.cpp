// Argument validation and run-time choice of the attention kernel variant.
#include "cpu/attention.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/cpu_features.h"

namespace mpt {
namespace {

std::atomic<bool> g_pruning{[] {
  const char* env = std::getenv("MPT_LITE_ALIBI_PRUNE");
  return !(env && std::strcmp(env, "0") == 0);
}()};
std::atomic<int64_t> g_pruned_keys{0}, g_seen_keys{0};

void check_cache(const KvCacheView& c) {
  if (c.kv_heads <= 0 || c.head_dim <= 0 || c.block_size <= 0 || c.num_slots < 0 ||
      c.num_slots % c.block_size != 0)
    throw std::invalid_argument("bad KV cache geometry");
  if ((c.dtype == KvDtype::I8 || c.dtype == KvDtype::Q4) && (!c.k_scale || !c.v_scale))
    throw std::invalid_argument("an int8 or 4-bit KV cache needs k_scale and v_scale");
  if (c.dtype == KvDtype::Q4 && c.head_dim % kQ4Group)
    throw std::invalid_argument("a 4-bit KV cache needs head_dim a multiple of 32");
}

// Every block a sequence will read must exist: bad tables raise instead of reading wild memory.
void check_args(const AttnArgs& a, const KvCacheView& c, bool decode, int64_t n_tokens) {
  check_cache(c);
  if (a.split_tokens < 0)
    throw std::invalid_argument("split_tokens must be >= 0, got " + std::to_string(a.split_tokens));
  if (a.num_heads <= 0 || a.num_heads % c.kv_heads != 0)
    throw std::invalid_argument("num_heads (" + std::to_string(a.num_heads) + ") must be a multiple of kv_heads (" +
                                std::to_string(c.kv_heads) + ")");
  const int64_t num_blocks = c.num_slots / c.block_size;
  if (!decode && a.query_start_loc[0] != 0) throw std::invalid_argument("query_start_loc[0] must be 0");
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q_len = decode ? 1 : a.query_start_loc[s + 1] - a.query_start_loc[s];
    const int ctx = a.context_lens[s];
    if (q_len < 1 || ctx < q_len)
      throw std::invalid_argument("sequence " + std::to_string(s) + ": context length " + std::to_string(ctx) +
                                  " must be >= its query count " + std::to_string(q_len) + " >= 1");
    const int64_t needed = (int64_t(ctx) + c.block_size - 1) / c.block_size;
    if (needed > a.max_blocks)
      throw std::invalid_argument("sequence " + std::to_string(s) + ": context length " + std::to_string(ctx) +
                                  " needs " + std::to_string(needed) + " blocks, the block table has " +
                                  std::to_string(a.max_blocks));
    const int32_t* row = a.block_tables + int64_t(s) * a.max_blocks;
    for (int64_t b = 0; b < needed; ++b)
      if (row[b] < 0 || row[b] >= num_blocks)
        throw std::out_of_range("sequence " + std::to_string(s) + ": block " + std::to_string(row[b]) +
                                " is outside the cache (" + std::to_string(num_blocks) + " blocks)");
  }
  const int64_t total = decode ? a.num_seqs : a.query_start_loc[a.num_seqs];
  if (total != n_tokens)
    throw std::invalid_argument("the sequences hold " + std::to_string(total) + " queries, q has " +
                                std::to_string(n_tokens));
}

void run(const AttnArgs& a, const KvCacheView& c, bool decode) {
  switch (current_isa()) {
#if MPT_LITE_X86_SIMD
    case Isa::Avx512: return attention_avx512::paged_attention(a, c, decode);
    case Isa::Avx2: return attention_avx2::paged_attention(a, c, decode);
#endif
    default: return attention_generic::paged_attention(a, c, decode);
  }
}

}  // namespace

void check_kv_slots(const int64_t* slots, int64_t n_tokens, const KvCacheView& c) {
  check_cache(c);
  for (int64_t t = 0; t < n_tokens; ++t)
    if (slots[t] >= c.num_slots)
      throw std::out_of_range("slot " + std::to_string(slots[t]) + " is outside the cache (" +
                              std::to_string(c.num_slots) + " slots)");
}

void check_attention_args(const AttnArgs& a, const KvCacheView& c, bool decode, int64_t n_tokens) {
  check_args(a, c, decode, n_tokens);
}

void write_kv_cache(const float* k, const float* v, int64_t n_tokens, const int64_t* slots, const KvCacheView& c) {
  check_kv_slots(slots, n_tokens, c);
  switch (current_isa()) {
#if MPT_LITE_X86_SIMD
    case Isa::Avx512: return attention_avx512::write_kv_cache(k, v, n_tokens, slots, c);
    case Isa::Avx2: return attention_avx2::write_kv_cache(k, v, n_tokens, slots, c);
#endif
    default: return attention_generic::write_kv_cache(k, v, n_tokens, slots, c);
  }
}

void paged_attention_decode(const AttnArgs& a, const KvCacheView& c) {
  check_args(a, c, true, a.num_seqs);
  run(a, c, true);
}

void paged_attention_prefill(const AttnArgs& a, const KvCacheView& c) {
  // n_tokens is checked by the caller against q's shape; here the table must be self-consistent.
  check_args(a, c, false, a.query_start_loc[a.num_seqs]);
  run(a, c, false);
}

void attention_exp(const float* x, float* y, int64_t n) {
  switch (current_isa()) {
#if MPT_LITE_X86_SIMD
    case Isa::Avx512: return attention_avx512::vector_exp(x, y, n);
    case Isa::Avx2: return attention_avx2::vector_exp(x, y, n);
#endif
    default: return attention_generic::vector_exp(x, y, n);
  }
}

bool alibi_pruning() { return g_pruning.load(std::memory_order_relaxed); }
void set_alibi_pruning(bool on) { g_pruning.store(on, std::memory_order_relaxed); }

void add_alibi_pruning_stats(int64_t skipped, int64_t seen) {
  g_pruned_keys.fetch_add(skipped, std::memory_order_relaxed);
  g_seen_keys.fetch_add(seen, std::memory_order_relaxed);
}

void alibi_pruning_stats(int64_t* skipped, int64_t* seen, bool reset) {
  *skipped = reset ? g_pruned_keys.exchange(0) : g_pruned_keys.load();
  *seen = reset ? g_seen_keys.exchange(0) : g_seen_keys.load();
}

}  // namespace mpt
