// The one pybind11 module, mpt_lite._C. Thin argument checks only: ops.py owns tensors, dtypes
// and shapes and hands raw buffers (pointers as integers) and sizes to these functions.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>

#include "cpu/attention.h"
#include "cpu/cpu_features.h"
#include "cpu/quant_formats.h"
#include "cpu/quant_search.h"
#include "cpu/thread_pool.h"

namespace py = pybind11;

#if MPT_LITE_WITH_CUDA
#include "cuda/ops_cuda.h"
#endif

static mpt::KvCacheView kv_view(uintptr_t k, uintptr_t v, uintptr_t k_scale, uintptr_t v_scale, int dtype,
                                int64_t num_slots, int kv_heads, int head_dim, int block_size) {
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("unknown KV cache dtype code");
  mpt::KvCacheView c;
  c.k = reinterpret_cast<void*>(k);
  c.v = reinterpret_cast<void*>(v);
  c.k_scale = reinterpret_cast<float*>(k_scale);
  c.v_scale = reinterpret_cast<float*>(v_scale);
  c.dtype = static_cast<mpt::KvDtype>(dtype);
  c.num_slots = num_slots;
  c.kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.block_size = block_size;
  return c;
}

// Buffers arrive as integer addresses (ops.py checked dtype, shape, contiguity and device).
template <typename T>
static T* P(uintptr_t a) { return reinterpret_cast<T*>(a); }
using G = py::call_guard<py::gil_scoped_release>;

static py::dict cpu_features_dict() {
  const mpt::CpuFeatures& f = mpt::cpu_features();
  py::dict d;
  d["avx2"] = f.avx2;
  d["fma"] = f.fma;
  d["f16c"] = f.f16c;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512vl"] = f.avx512vl;
  d["avx512dq"] = f.avx512dq;
  d["avx512vnni"] = f.avx512vnni;
  d["avx512bf16"] = f.avx512bf16;
  d["avx512vbmi"] = f.avx512vbmi;
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "mpt_lite kernels (no torch linkage; see mpt_lite/ops.py)";

  // ---- CPU features, kernel variant, threads ----
  m.def("cpu_features", &cpu_features_dict, "CPU features detected at run time");
  m.def("supported_isas", &mpt::supported_isa_names, "kernel variants this CPU can run");
  m.def("current_isa", [] { return std::string(mpt::isa_name(mpt::current_isa())); });
  m.def("set_isa", [](const std::string& name) { mpt::set_isa(mpt::isa_from_name(name)); }, py::arg("name"));
  m.def("num_threads", &mpt::num_threads);
  m.def("set_num_threads", &mpt::set_num_threads, py::arg("n"));

  // ---- CUDA (csrc/cuda/*.cu): the same ops on device pointers; every call takes the device index
  // and torch's current stream (an integer) first, and returns once the work is enqueued. ----
#if MPT_LITE_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("cuda_device_count", &mpt::cuda::device_count);
  using mpt::cuda::Launch;
  m.def("quantize_int8_cuda", [](int dev, uintptr_t st, uintptr_t w, int64_t N, int64_t K, uintptr_t cb,
                                 uintptr_t scb) {
    mpt::cuda::quantize_int8(Launch{dev, st}, P<const float>(w), N, K, P<int8_t>(cb), P<float>(scb));
  }, G());
  m.def("quantize_nf4_cuda", [](int dev, uintptr_t st, uintptr_t w, int64_t numel, int64_t bs, uintptr_t packed,
                                uintptr_t absmax) {
    mpt::cuda::quantize_nf4(Launch{dev, st}, P<const float>(w), numel, bs, P<uint8_t>(packed), P<float>(absmax));
  }, G());
  m.def("quantize_int4_cuda", [](int dev, uintptr_t st, uintptr_t w, int64_t N, int64_t K, uintptr_t packed,
                                 uintptr_t scales) {
    mpt::cuda::quantize_int4(Launch{dev, st}, P<const float>(w), N, K, P<uint8_t>(packed), P<float>(scales));
  }, G());
  // fmt: 0 int8 (cb, scb), 1 nf4 (packed, absmax; blocksize), 2 int4 (packed, scales).
  m.def("dequantize_cuda", [](int dev, uintptr_t st, int fmt, uintptr_t data, uintptr_t scale, int64_t N, int64_t K,
                              int64_t bs, uintptr_t out) {
    mpt::cuda::dequantize(Launch{dev, st}, fmt, P<const void>(data), P<const float>(scale), N, K, bs, P<float>(out));
  }, G());
  m.def("dequantize_rows_cuda", [](int dev, uintptr_t st, int fmt, uintptr_t data, uintptr_t scale, int64_t N,
                                   int64_t K, int64_t bs, uintptr_t rows, int64_t nrows, uintptr_t out) {
    mpt::cuda::dequantize_rows(Launch{dev, st}, fmt, P<const void>(data), P<const float>(scale), N, K, bs,
                               P<const int64_t>(rows), nrows, P<float>(out));
  }, G());
  m.def("matmul_cuda", [](int dev, uintptr_t st, int fmt, uintptr_t x, int64_t M, uintptr_t data, uintptr_t scale,
                          int64_t N, int64_t K, int64_t bs, uintptr_t bias, uintptr_t y) {
    mpt::cuda::qmatmul(Launch{dev, st}, fmt, P<const float>(x), M, P<const void>(data), P<const float>(scale), N, K,
                       bs, P<const float>(bias), P<float>(y));
  }, G());
  m.attr("cuda_gemv_max_m") = mpt::cuda::kGemvMaxM;
  // *_host: CPU copies of the index arrays (checked, and read for the launch geometry).
  m.def("write_kv_cache_cuda", [](int dev, uintptr_t st, uintptr_t k, uintptr_t v, int64_t n_tokens, uintptr_t slots,
                                  uintptr_t slots_host, uintptr_t kc, uintptr_t vc, uintptr_t ks, uintptr_t vs,
                                  int dtype, int64_t num_slots, int kv_heads, int head_dim, int block_size) {
    mpt::KvCacheView c = kv_view(kc, vc, ks, vs, dtype, num_slots, kv_heads, head_dim, block_size);
    py::gil_scoped_release nogil;
    mpt::cuda::write_kv_cache(Launch{dev, st}, P<const float>(k), P<const float>(v), n_tokens, P<const int64_t>(slots),
                              P<const int64_t>(slots_host), c);
  });
  m.def("paged_attention_cuda", [](int dev, uintptr_t st, bool decode, uintptr_t q, uintptr_t out, int64_t n_rows,
                                   int num_heads, int num_seqs, uintptr_t block_tables, uintptr_t block_tables_host,
                                   int max_blocks, uintptr_t context_lens, uintptr_t context_lens_host,
                                   uintptr_t query_start_loc, uintptr_t query_start_loc_host, uintptr_t slopes,
                                   float scale, uintptr_t kc, uintptr_t vc, uintptr_t ks, uintptr_t vs, int dtype,
                                   int64_t num_slots, int kv_heads, int head_dim, int block_size) {
    mpt::KvCacheView c = kv_view(kc, vc, ks, vs, dtype, num_slots, kv_heads, head_dim, block_size);
    mpt::AttnArgs a;
    a.q = P<const float>(q);
    a.out = P<float>(out);
    a.num_heads = num_heads;
    a.num_seqs = num_seqs;
    a.block_tables = P<const int32_t>(block_tables);
    a.max_blocks = max_blocks;
    a.context_lens = P<const int32_t>(context_lens);
    a.query_start_loc = P<const int32_t>(query_start_loc);
    a.slopes = P<const float>(slopes);
    a.scale = scale;
    mpt::AttnArgs h = a;
    h.block_tables = P<const int32_t>(block_tables_host);
    h.context_lens = P<const int32_t>(context_lens_host);
    h.query_start_loc = P<const int32_t>(query_start_loc_host);
    py::gil_scoped_release nogil;
    mpt::cuda::paged_attention(Launch{dev, st}, decode, a, h, n_rows, c);
  });
#else
  m.attr("with_cuda") = false;
  m.def("cuda_device_count", [] { return 0; });
#endif

  // ---- quantized matmuls (csrc/cpu/quant_*.cpp) ----
  m.def("quantize_int8", [](uintptr_t w, int64_t N, int64_t K, uintptr_t cb, uintptr_t scb) {
    mpt::quantize_int8(P<const float>(w), N, K, P<int8_t>(cb), P<float>(scb));
  }, G());
  m.def("dequantize_int8", [](uintptr_t cb, uintptr_t scb, int64_t N, int64_t K, uintptr_t out) {
    mpt::dequantize_int8(P<const int8_t>(cb), P<const float>(scb), N, K, P<float>(out));
  }, G());
  m.def("dequantize_rows_int8", [](uintptr_t cb, uintptr_t scb, int64_t K, uintptr_t rows, int64_t n, uintptr_t out) {
    mpt::dequantize_rows_int8(P<const int8_t>(cb), P<const float>(scb), K, P<const int64_t>(rows), n, P<float>(out));
  }, G());
  m.def("matmul_int8", [](uintptr_t x, int64_t M, int64_t K, uintptr_t cb, uintptr_t scb, int64_t N, uintptr_t bias,
                          uintptr_t y, bool q8) {
    mpt::matmul_int8(P<const float>(x), M, K, P<const int8_t>(cb), P<const float>(scb), N, P<const float>(bias),
                     P<float>(y), q8);
  }, G());
  m.def("quantize_nf4", [](uintptr_t w, int64_t numel, int64_t bs, uintptr_t packed, uintptr_t absmax) {
    mpt::quantize_nf4(P<const float>(w), numel, bs, P<uint8_t>(packed), P<float>(absmax));
  }, G());
  m.def("dequantize_nf4", [](uintptr_t packed, uintptr_t absmax, int64_t numel, int64_t bs, uintptr_t out) {
    mpt::dequantize_nf4(P<const uint8_t>(packed), P<const float>(absmax), numel, bs, P<float>(out));
  }, G());
  m.def("dequantize_rows_nf4", [](uintptr_t packed, uintptr_t absmax, int64_t K, int64_t bs, uintptr_t rows, int64_t n,
                                  uintptr_t out) {
    mpt::dequantize_rows_nf4(P<const uint8_t>(packed), P<const float>(absmax), K, bs, P<const int64_t>(rows), n,
                             P<float>(out));
  }, G());
  m.def("matmul_nf4", [](uintptr_t x, int64_t M, int64_t K, uintptr_t packed, uintptr_t absmax, int64_t N, int64_t bs,
                         uintptr_t bias, uintptr_t y) {
    mpt::matmul_nf4(P<const float>(x), M, K, P<const uint8_t>(packed), P<const float>(absmax), N, bs,
                    P<const float>(bias), P<float>(y));
  }, G());
  m.def("quantize_int4", [](uintptr_t w, int64_t N, int64_t K, uintptr_t packed, uintptr_t scales) {
    mpt::quantize_int4(P<const float>(w), N, K, P<uint8_t>(packed), P<float>(scales));
  }, G());
  m.def("search_quantize_int4", [](uintptr_t w, int64_t N, int64_t K, uintptr_t packed, uintptr_t scales) {
    mpt::search_quantize_int4(P<const float>(w), N, K, P<uint8_t>(packed), P<float>(scales));
  }, G());
  m.def("search_quantize_nf4", [](uintptr_t w, int64_t numel, int64_t bs, uintptr_t packed, uintptr_t absmax) {
    mpt::search_quantize_nf4(P<const float>(w), numel, bs, P<uint8_t>(packed), P<float>(absmax));
  }, G());
  m.def("dequantize_int4", [](uintptr_t packed, uintptr_t scales, int64_t N, int64_t K, uintptr_t out) {
    mpt::dequantize_int4(P<const uint8_t>(packed), P<const float>(scales), N, K, P<float>(out));
  }, G());
  m.def("dequantize_rows_int4", [](uintptr_t packed, uintptr_t scales, int64_t K, uintptr_t rows, int64_t n,
                                   uintptr_t out) {
    mpt::dequantize_rows_int4(P<const uint8_t>(packed), P<const float>(scales), K, P<const int64_t>(rows), n,
                              P<float>(out));
  }, G());
  m.def("matmul_int4", [](uintptr_t x, int64_t M, int64_t K, uintptr_t packed, uintptr_t scales, int64_t N,
                          uintptr_t bias, uintptr_t y, bool q8) {
    mpt::matmul_int4(P<const float>(x), M, K, P<const uint8_t>(packed), P<const float>(scales), N,
                     P<const float>(bias), P<float>(y), q8);
  }, G());

  // ---- paged KV cache and attention (csrc/cpu/attention_*.cpp) ----
  // cache arguments, in order: k, v, k_scale, v_scale (0 unless int8), dtype code (0 f32, 1 bf16,
  // 2 f16, 3 int8), num_slots, kv_heads, head_dim, block_size.
  m.def("write_kv_cache", [](uintptr_t k, uintptr_t v, int64_t n_tokens, uintptr_t slots, uintptr_t kc, uintptr_t vc,
                             uintptr_t ks, uintptr_t vs, int dtype, int64_t num_slots, int kv_heads, int head_dim,
                             int block_size) {
    mpt::KvCacheView c = kv_view(kc, vc, ks, vs, dtype, num_slots, kv_heads, head_dim, block_size);
    py::gil_scoped_release nogil;
    mpt::write_kv_cache(reinterpret_cast<const float*>(k), reinterpret_cast<const float*>(v), n_tokens,
                        reinterpret_cast<const int64_t*>(slots), c);
  });
  m.def("paged_attention", [](bool decode, uintptr_t q, uintptr_t out, int num_heads, int num_seqs,
                              uintptr_t block_tables, int max_blocks, uintptr_t context_lens,
                              uintptr_t query_start_loc, uintptr_t slopes, float scale, uintptr_t kc, uintptr_t vc,
                              uintptr_t ks, uintptr_t vs, int dtype, int64_t num_slots, int kv_heads, int head_dim,
                              int block_size) {
    mpt::KvCacheView c = kv_view(kc, vc, ks, vs, dtype, num_slots, kv_heads, head_dim, block_size);
    mpt::AttnArgs a;
    a.q = reinterpret_cast<const float*>(q);
    a.out = reinterpret_cast<float*>(out);
    a.num_heads = num_heads;
    a.num_seqs = num_seqs;
    a.block_tables = reinterpret_cast<const int32_t*>(block_tables);
    a.max_blocks = max_blocks;
    a.context_lens = reinterpret_cast<const int32_t*>(context_lens);
    a.query_start_loc = reinterpret_cast<const int32_t*>(query_start_loc);
    a.slopes = reinterpret_cast<const float*>(slopes);
    a.scale = scale;
    py::gil_scoped_release nogil;
    if (decode) mpt::paged_attention_decode(a, c);
    else mpt::paged_attention_prefill(a, c);
  });
}
