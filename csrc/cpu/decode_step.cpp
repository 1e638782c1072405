// The engine's forward pass in one native call (see decode_step.h).
#include "cpu/decode_step.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cpu/activations.h"
#include "cpu/cpu_features.h"
#include "cpu/norms.h"
#include "cpu/quant_formats.h"
#include "cpu/quant_int6.h"
#include "cpu/step_profile.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

std::string where(int64_t layer, const std::string& name) {
  return layer < 0 ? name : "layer " + std::to_string(layer) + " " + name;
}

void check_weight(const StepWeight& w, int64_t layer, const std::string& name, int64_t N, int64_t K) {
  if (w.fmt == StepFormat::Unset || !w.data) throw std::invalid_argument(where(layer, name) + " is not set");
  if (w.fmt != StepFormat::F32 && !w.scale) throw std::invalid_argument(where(layer, name) + " has no scales");
  if (w.N != N || w.K != K)
    throw std::invalid_argument(where(layer, name) + " must be [" + std::to_string(N) + ", " + std::to_string(K) +
                                "], got [" + std::to_string(w.N) + ", " + std::to_string(w.K) + "]");
  if (w.fmt == StepFormat::Nf4 && (w.blocksize < 2 || w.blocksize % 2))
    throw std::invalid_argument(where(layer, name) + ": bad nf4 blocksize");
  if ((w.fmt == StepFormat::Int4 || w.fmt == StepFormat::Int4Rows8) && !int4_group_ok(w.int4_group()))
    throw std::invalid_argument(where(layer, name) + ": bad int4 group");
}

void check_norm(const StepNorm& n, int64_t layer, const std::string& name) {
  if (!n.weight) throw std::invalid_argument(where(layer, name) + " is not set");
}

// y [M, N] = x [M, K] @ W^T + bias, W float32 [N, K]; eight partial sums per dot product.
void dense_matmul(const StepWeight& w, const float* x, int64_t M, float* y) {
  const int64_t N = w.N, K = w.K;
  const float* W = static_cast<const float*>(w.data);
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* wr = W + n * K;
      const float b = w.bias ? w.bias[n] : 0.f;
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * K;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t k = 0;
        for (; k + 8 <= K; k += 8)
          for (int j = 0; j < 8; ++j) acc[j] += xr[k + j] * wr[k + j];
        float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; k < K; ++k) s += xr[k] * wr[k];
        y[m * N + n] = s + b;
      }
    }
  });
}

// The same kernels and the same activation choice as kernels/quant_ops.py.
void linear(const StepWeight& w, const float* x, int64_t M, float* y, const StepConfig& c) {
  const bool q8 = M <= c.q8_max_rows || (c.q8_gemm_min_k > 0 && w.K >= c.q8_gemm_min_k);  // nf4: if nf4_q8_ok
  const bool bf16 = c.bf16_min_rows > 0 && M >= c.bf16_min_rows && c.q8_gemm_min_k > 0 && w.K >= c.q8_gemm_min_k &&
                    amx_enabled();  // the many-row q8 matmuls: bf16 operands on AMX tiles instead
  switch (w.fmt) {
    case StepFormat::F32: return dense_matmul(w, x, M, y);
    case StepFormat::Int8:
      return matmul_int8(x, M, w.K, static_cast<const int8_t*>(w.data), w.fscale(), w.N, w.bias, y, q8, bf16);
    case StepFormat::Int8Rows8:
      return matmul_int8(x, M, w.K, static_cast<const int8_t*>(w.data), w.fscale(), w.N, w.bias, y, q8, bf16, true);
    case StepFormat::Nf4:
      return matmul_nf4(x, M, w.K, static_cast<const uint8_t*>(w.data), w.fscale(), w.N, w.blocksize, w.bias, y, q8,
                        bf16);
    case StepFormat::Int4:
      return matmul_int4(x, M, w.K, static_cast<const uint8_t*>(w.data), w.hscale(), w.N, w.bias, y, q8, bf16, false,
                         w.int4_group());
    case StepFormat::Int4Rows8:
      return matmul_int4(x, M, w.K, static_cast<const uint8_t*>(w.data), w.hscale(), w.N, w.bias, y, q8, bf16, true,
                         w.int4_group());
    case StepFormat::Nf4Rows8:
      return matmul_nf4(x, M, w.K, static_cast<const uint8_t*>(w.data), w.fscale(), w.N, w.blocksize, w.bias, y, q8,
                        bf16, true);
    case StepFormat::Int6:
      return matmul_int6(x, M, w.K, static_cast<const uint8_t*>(w.data), w.hscale(), w.N, w.bias, y);
    default: throw std::invalid_argument("unset weight");
  }
}

void embed(const StepWeight& w, const int64_t* ids, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= w.N)
      throw std::out_of_range("token id " + std::to_string(ids[i]) + " is outside the vocabulary of " +
                              std::to_string(w.N));
  const int64_t K = w.K;
  switch (w.fmt) {
    case StepFormat::F32:
      for (int64_t i = 0; i < n; ++i) std::copy_n(static_cast<const float*>(w.data) + ids[i] * K, K, out + i * K);
      return;
    case StepFormat::Int8:
      return dequantize_rows_int8(static_cast<const int8_t*>(w.data), w.fscale(), K, ids, n, out);
    case StepFormat::Int8Rows8:
      return dequantize_rows_int8_rows8(static_cast<const int8_t*>(w.data), w.fscale(), w.N, K, ids, n, out);
    case StepFormat::Nf4:
      return dequantize_rows_nf4(static_cast<const uint8_t*>(w.data), w.fscale(), K, w.blocksize, ids, n, out);
    case StepFormat::Int4:
      return dequantize_rows_int4(static_cast<const uint8_t*>(w.data), w.hscale(), K, ids, n, out, w.int4_group());
    case StepFormat::Int6: return dequantize_rows_int6(static_cast<const uint8_t*>(w.data), w.hscale(), K, ids, n, out);
    default: throw std::invalid_argument("unset embedding (or one in a layout only the Linears take)");
  }
}

// Bytes of codes and scales a matmul over w reads (the step profile's rates).
int64_t weight_bytes(const StepWeight& w) {
  const int64_t n = w.N * w.K;
  switch (w.fmt) {
    case StepFormat::F32: return n * 4;
    case StepFormat::Int8:
    case StepFormat::Int8Rows8: return n + w.N * 4;
    case StepFormat::Nf4:
    case StepFormat::Nf4Rows8: return n / 2 + n / w.blocksize * 4;
    case StepFormat::Int4:
    case StepFormat::Int4Rows8: return n / 2 + n / w.int4_group() * 2;
    case StepFormat::Int6: return w.N * (int6_row_bytes(w.K) + int4_groups(w.K) * 2);
    default: return 0;
  }
}

// fn() as one op of the step profile (timed only when MPT_LITE_STEP_PROFILE is on).
template <class F>
void profiled(StepOp op, F&& fn, int64_t bytes = 0) {
  StepTimer t(op, bytes);
  fn();
}

void timed_linear(StepOp op, const StepWeight& w, const float* x, int64_t M, float* y, const StepConfig& c) {
  profiled(op, [&] { linear(w, x, M, y, c); }, StepProfile::get().on() ? weight_bytes(w) : 0);
}

void layer_norm(const StepNorm& nw, const float* x, int64_t M, int64_t d, float eps, float* y) {
  layer_norm_rows(x, nw.weight, nw.bias, M, d, eps, y);
}

}  // namespace

DecodePlan::DecodePlan(const StepConfig& cfg) : cfg_(cfg) {
  if (cfg.d_model <= 0 || cfg.n_heads <= 0 || cfg.kv_heads <= 0 || cfg.head_dim <= 0 || cfg.ffn <= 0 ||
      cfg.vocab <= 0 || cfg.n_layers < 0)
    throw std::invalid_argument("decode plan: every dimension must be positive");
  if (cfg.n_heads * cfg.head_dim != cfg.d_model)
    throw std::invalid_argument("decode plan: n_heads * head_dim must equal d_model");
  if (cfg.n_heads % cfg.kv_heads)
    throw std::invalid_argument("decode plan: n_heads must be a multiple of kv_heads");
  layers_.resize(static_cast<size_t>(cfg.n_layers));
}

StepLayer& DecodePlan::layer(int64_t i) {
  if (i < 0 || i >= cfg_.n_layers)
    throw std::out_of_range("decode plan: layer " + std::to_string(i) + " of " + std::to_string(cfg_.n_layers));
  return layers_[static_cast<size_t>(i)];
}

StepWeight& DecodePlan::weight(int64_t layer_index, const std::string& name) {
  if (layer_index < 0) {
    if (name == "embedding") return embedding_;
    if (name == "lm_head") return lm_head_;
  } else {
    StepLayer& l = layer(layer_index);
    if (name == "wqkv") return l.wqkv;
    if (name == "out_proj") return l.out_proj;
    if (name == "up_proj") return l.up_proj;
    if (name == "down_proj") return l.down_proj;
  }
  throw std::invalid_argument("decode plan: no weight " + where(layer_index, name));
}

StepNorm& DecodePlan::norm(int64_t layer_index, const std::string& name) {
  if (layer_index < 0 && name == "norm_f") return norm_f_;
  if (layer_index >= 0 && name == "norm_1") return layer(layer_index).norm_1;
  if (layer_index >= 0 && name == "norm_2") return layer(layer_index).norm_2;
  throw std::invalid_argument("decode plan: no norm " + where(layer_index, name));
}

void DecodePlan::validate() const {
  const StepConfig& c = cfg_;
  const int64_t kv_dim = c.kv_heads * c.head_dim;
  check_weight(embedding_, -1, "embedding", c.vocab, c.d_model);
  check_weight(lm_head_, -1, "lm_head", c.vocab, c.d_model);
  check_norm(norm_f_, -1, "norm_f");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const StepLayer& l = layers_[static_cast<size_t>(i)];
    check_norm(l.norm_1, i, "norm_1");
    check_norm(l.norm_2, i, "norm_2");
    check_weight(l.wqkv, i, "wqkv", c.d_model + 2 * kv_dim, c.d_model);
    check_weight(l.out_proj, i, "out_proj", c.d_model, c.d_model);
    check_weight(l.up_proj, i, "up_proj", c.ffn, c.d_model);
    check_weight(l.down_proj, i, "down_proj", c.d_model, c.ffn);
    if (!l.has_cache) throw std::invalid_argument(where(i, "KV cache") + " is not set");
    if (l.cache.kv_heads != c.kv_heads || l.cache.head_dim != c.head_dim)
      throw std::invalid_argument(where(i, "KV cache") + " has the wrong kv_heads or head_dim");
  }
}

void DecodePlan::step(const StepBatch& b) {
  validate();
  const StepConfig& c = cfg_;
  const int64_t M = b.n_tokens, d = c.d_model, kv_dim = c.kv_heads * c.head_dim, wq = d + 2 * kv_dim;
  if (M <= 0) throw std::invalid_argument("decode step: no tokens");
  if (b.num_seqs <= 0) throw std::invalid_argument("decode step: no sequences");
  for (int64_t r = 0; r < b.n_rows; ++r)
    if (b.rows[r] < 0 || b.rows[r] >= M)
      throw std::out_of_range("decode step: logits row " + std::to_string(b.rows[r]) + " is outside the " +
                              std::to_string(M) + " tokens");
  // Scratch grows to the largest batch seen and is kept for the next step.
  auto fit = [](std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
  };
  float* x = fit(x_, M * d);
  float* h = fit(h_, std::max(M, b.n_rows) * d);
  float* qkv = fit(qkv_, M * wq);
  float* q = fit(q_, M * d);
  float* k = fit(k_, M * kv_dim);
  float* v = fit(v_, M * kv_dim);
  float* att = fit(att_, M * d);
  float* ff = fit(ff_, M * c.ffn);

  StepProfile::get().begin_step(b.decode);
  profiled(StepOp::Embed, [&] { embed(embedding_, b.ids, M, x); });
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const StepLayer& l = layers_[static_cast<size_t>(i)];
    profiled(StepOp::Norm, [&] { layer_norm(l.norm_1, x, M, d, c.eps, h); });
    timed_linear(StepOp::Qkv, l.wqkv, h, M, qkv, c);
    StepTimer attention_timer(StepOp::Attention);  // clip, the KV-cache write and attention
    if (c.clip_qkv > 0.f)
      for (int64_t j = 0; j < M * wq; ++j) qkv[j] = std::min(c.clip_qkv, std::max(-c.clip_qkv, qkv[j]));
    for (int64_t t = 0; t < M; ++t) {
      const float* r = qkv + t * wq;
      std::copy_n(r, d, q + t * d);
      std::copy_n(r + d, kv_dim, k + t * kv_dim);
      std::copy_n(r + d + kv_dim, kv_dim, v + t * kv_dim);
    }
    write_kv_cache(k, v, M, b.slots, l.cache);
    AttnArgs a;
    a.q = q;
    a.out = att;
    a.num_heads = static_cast<int>(c.n_heads);
    a.num_seqs = b.num_seqs;
    a.block_tables = b.block_tables;
    a.max_blocks = b.max_blocks;
    a.context_lens = b.context_lens;
    a.query_start_loc = b.query_start_loc;
    a.slopes = c.slopes;
    a.scale = c.softmax_scale;
    if (b.decode) {
      if (b.num_seqs != M) throw std::invalid_argument("decode step: a decode batch has one token per sequence");
      paged_attention_decode(a, l.cache);
    } else {
      if (b.query_start_loc[b.num_seqs] != M)
        throw std::invalid_argument("decode step: query_start_loc does not cover the tokens");
      paged_attention_prefill(a, l.cache);
    }
    attention_timer.stop();
    timed_linear(StepOp::OutProj, l.out_proj, att, M, h, c);
    profiled(StepOp::Residual, [&] { add_inplace(x, h, M * d); });
    profiled(StepOp::Norm, [&] { layer_norm(l.norm_2, x, M, d, c.eps, h); });
    timed_linear(StepOp::UpProj, l.up_proj, h, M, ff, c);
    profiled(StepOp::Gelu, [&] { gelu_inplace(ff, M * c.ffn); });
    timed_linear(StepOp::DownProj, l.down_proj, ff, M, h, c);
    profiled(StepOp::Residual, [&] { add_inplace(x, h, M * d); });
  }
  // Only the requested rows need the final norm and the logits.
  float* picked = fit(rows_, b.n_rows * d);
  for (int64_t r = 0; r < b.n_rows; ++r) std::copy_n(x + b.rows[r] * d, d, picked + r * d);
  layer_norm(norm_f_, picked, b.n_rows, d, c.eps, h);
  StepProfile::get().step_done();
  if (b.n_rows == 0) return;
  timed_linear(StepOp::Logits, lm_head_, h, b.n_rows, b.logits, c);
  if (c.has_logit_scale)
    for (int64_t j = 0; j < b.n_rows * c.vocab; ++j) b.logits[j] *= c.logit_scale;
}

}  // namespace mpt
