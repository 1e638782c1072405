// Paged KV cache and ALiBi attention on the CPU.
//
// Cache layout (one tensor each for K and V, per layer): [num_slots][kv_heads][head_dim], where a
// slot is block * block_size + offset (vLLM's slot mapping). fp32, bf16 and fp16 caches store the
// values; int8 caches store round(x / s) with s = absmax / 127 over one token and head, s in a
// float32 [num_slots][kv_heads] array beside them. 4-bit caches (Q4, llama.cpp's q4_0 as a KV type)
// hold [num_slots][kv_heads][head_dim / 2] bytes: each group of 32 values of a row has a float32
// scale d = m / -8 (m its value of largest magnitude) in a [num_slots][kv_heads][head_dim / 32]
// array, and codes c = min(15, floor(x / d + 8.5)), value (c - 8) * d; byte j of a group holds
// the codes of its values j (low nibble) and j + 16 (high nibble). head_dim a multiple of 32.
//
// Attention: query token i of sequence s sits at position ctx_len[s] - q_len[s] + i and sees keys
// 0..its position (causal); score = (q . k) * scale + slope[h] * (key_pos - query_pos). Keys are
// read through the sequence's block table; the new tokens must already be written to the cache.
#pragma once
#include <cstdint>

namespace mpt {

enum class KvDtype : int { F32 = 0, BF16 = 1, F16 = 2, I8 = 3, Q4 = 4 };
constexpr int kQ4Group = 32;  // values a scale in 4-bit caches

struct KvCacheView {
  void* k = nullptr;
  void* v = nullptr;
  float* k_scale = nullptr;  // int8 and 4-bit only
  float* v_scale = nullptr;
  // Float caches, optional: each key row's largest |value| ([num_slots][kv_heads], written with the row),
  // which lets attention skip blocks as it does with the scales of quantized caches (alibi_pruning.h).
  float* k_bound = nullptr;
  KvDtype dtype = KvDtype::F32;
  int64_t num_slots = 0;  // num_blocks * block_size
  int kv_heads = 0, head_dim = 0, block_size = 0;
};

struct AttnArgs {
  const float* q = nullptr;  // [tokens][heads][head_dim]
  float* out = nullptr;      // same shape as q
  int num_heads = 0;
  int num_seqs = 0;
  const int32_t* block_tables = nullptr;  // [num_seqs][max_blocks]
  int max_blocks = 0;
  const int32_t* context_lens = nullptr;     // [num_seqs], cached + new tokens
  const int32_t* query_start_loc = nullptr;  // [num_seqs + 1], prefill only (decode: one query each)
  const float* slopes = nullptr;             // [num_heads] or null (no ALiBi)
  float scale = 1.0f;
  // decode: > 0 splits each context into parts of this many tokens (rounded up to whole blocks),
  // computed in parallel and merged; 0 splits only when the sequences are too few for
  // the threads (attention_kernel.h).
  int split_tokens = 0;
};

// k, v: [n_tokens][kv_heads][head_dim] float32; slot_mapping[i] < 0 skips token i.
void write_kv_cache(const float* k, const float* v, int64_t n_tokens, const int64_t* slot_mapping,
                    const KvCacheView& cache);
void paged_attention_decode(const AttnArgs& a, const KvCacheView& cache);
void paged_attention_prefill(const AttnArgs& a, const KvCacheView& cache);
// CPU attention (decode and prefill) over int8 and 4-bit caches skips the blocks whose keys ALiBi has made
// negligible (alibi_pruning.h): on unless MPT_LITE_ALIBI_PRUNE=0 or set_alibi_pruning(false).
bool alibi_pruning();
void set_alibi_pruning(bool on);
// Keys x query rows that decode attention skipped and visited since the last reset (every thread).
void alibi_pruning_stats(int64_t* skipped, int64_t* seen, bool reset);
void add_alibi_pruning_stats(int64_t skipped, int64_t seen);
// y = exp(x) as the attention kernel of the current variant computes it (for its accuracy tests).
void attention_exp(const float* x, float* y, int64_t n);

// The argument checks of the calls above (they raise std::invalid_argument / std::out_of_range),
// also run by the CUDA entry points on host copies of the index arrays.
void check_kv_slots(const int64_t* slot_mapping, int64_t n_tokens, const KvCacheView& cache);
void check_attention_args(const AttnArgs& a, const KvCacheView& cache, bool decode, int64_t n_tokens);

// One variant per ISA (attention_generic.cpp, attention_avx2.cpp, attention_avx512.cpp).
#define MPT_ATTENTION_VARIANT(ns)                                                                  \
  namespace ns {                                                                                   \
  void write_kv_cache(const float* k, const float* v, int64_t n_tokens, const int64_t* slots,      \
                      const KvCacheView& cache);                                                   \
  void paged_attention(const AttnArgs& a, const KvCacheView& cache, bool decode);                  \
  void vector_exp(const float* x, float* y, int64_t n);                                            \
  }
MPT_ATTENTION_VARIANT(attention_generic)
MPT_ATTENTION_VARIANT(attention_avx2)
MPT_ATTENTION_VARIANT(attention_avx512)
#undef MPT_ATTENTION_VARIANT

}  // namespace mpt
