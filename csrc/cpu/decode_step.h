// The engine's whole forward pass in one call: a DecodePlan holds pointers to every weight of an MPT
// causal LM (float32 or int8 / nf4 / int4 codes, each weight its own format), its config fields,
// the paged KV cache of each layer and scratch buffers; decode_step runs a flat batch of new tokens
// of several sequences through it and writes the logits of the requested rows.
//
// Per layer, as model/layers.py computes it: x += out_proj(attn(clip(Wqkv(LN_1(x)))));
// x += down_proj(gelu(up_proj(LN_2(x)))); then LN_f and the logits (times logit_scale when set).
// Quantized matmuls use the same kernel entry points, with the same q8 choice (rows <= q8_max_rows;
// nf4 where nf4_q8_ok), as mpt_lite/kernels/quant_ops.py, so they compute the same numbers.
// The plan owns nothing but its scratch: the caller keeps every buffer alive.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/attention.h"

namespace mpt {

// rows8: Linears only (int8: the embedding too); int6: the embedding's 6-bit format (quant_int6.h)
enum class StepFormat : int { Unset = -2, F32 = -1, Int8 = 0, Nf4 = 1, Int4 = 2, Int4Rows8 = 3, Nf4Rows8 = 4, Int8Rows8 = 5, Int6 = 6 };

struct StepWeight {  // W [N, K]; F32: data is float [N, K]; else the codes of quant_formats.h
  StepFormat fmt = StepFormat::Unset;
  int64_t N = 0, K = 0, blocksize = 0;  // blocksize: nf4's; int4's group (k per scale; 0: 32)
  const void* data = nullptr;
  const void* scale = nullptr;  // float [..] for int8 / nf4, half bits (uint16) for int4 / int6
  const float* bias = nullptr;  // [N] or null
  const float* fscale() const { return static_cast<const float*>(scale); }
  const uint16_t* hscale() const { return static_cast<const uint16_t*>(scale); }
  int64_t int4_group() const { return blocksize > 0 ? blocksize : 32; }
};

struct StepNorm {  // LayerNorm: weight [d], bias [d] or null
  const float* weight = nullptr;
  const float* bias = nullptr;
};

struct StepLayer {
  StepNorm norm_1, norm_2;
  StepWeight wqkv, out_proj, up_proj, down_proj;
  KvCacheView cache;
  bool has_cache = false;
};

struct StepConfig {
  int64_t d_model = 0, n_heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, vocab = 0, n_layers = 0;
  float eps = 1e-5f;
  float clip_qkv = 0.f;        // 0: no clipping
  float softmax_scale = 1.f;
  float logit_scale = 1.f;
  bool has_logit_scale = false;
  const float* slopes = nullptr;  // [n_heads] or null (no ALiBi)
  int64_t q8_max_rows = 0;
  int64_t q8_gemm_min_k = 0;  // in_features >= this: q8 at any row count (0: never; nf4 where nf4_q8_ok)
  int64_t bf16_min_rows = 0;  // this many rows and q8_gemm_min_k: bf16 operands on AMX tiles where amx_enabled() (0: never)
};

struct StepBatch {
  const int64_t* ids = nullptr;  // [n_tokens]
  int64_t n_tokens = 0;
  const int64_t* slots = nullptr;          // [n_tokens] cache slot of each new token
  const int32_t* block_tables = nullptr;   // [num_seqs][max_blocks]
  int num_seqs = 0, max_blocks = 0;
  const int32_t* context_lens = nullptr;      // [num_seqs]
  const int32_t* query_start_loc = nullptr;   // [num_seqs + 1]
  bool decode = false;                        // every sequence has one new token
  const int64_t* rows = nullptr;              // [n_rows] token rows whose logits are wanted
  int64_t n_rows = 0;
  float* logits = nullptr;                    // [n_rows][vocab]
};

class DecodePlan {
 public:
  explicit DecodePlan(const StepConfig& cfg);
  // name: "wqkv", "out_proj", "up_proj", "down_proj" (layer >= 0); "embedding", "lm_head" (layer -1).
  StepWeight& weight(int64_t layer, const std::string& name);
  // name: "norm_1", "norm_2" (layer >= 0); "norm_f" (layer -1).
  StepNorm& norm(int64_t layer, const std::string& name);
  StepLayer& layer(int64_t i);
  // Raises std::invalid_argument naming the first missing or mis-shaped part.
  void validate() const;
  void step(const StepBatch& b);
  const StepConfig& config() const { return cfg_; }

 private:
  StepConfig cfg_;
  StepWeight embedding_, lm_head_;
  StepNorm norm_f_;
  std::vector<StepLayer> layers_;
  std::vector<float> x_, h_, qkv_, q_, k_, v_, att_, ff_, rows_;
};

}  // namespace mpt
