// The one pybind11 module, mpt_lite._C. Thin argument checks only: mpt_lite/kernels owns tensors,
// dtypes and shapes and hands raw buffers (addresses as integers) and sizes to these functions.
// Every function takes its arguments by keyword only (a swapped pair is a TypeError, a null buffer
// or a bad size a ValueError; bind_args.h), runs without the GIL, and takes `num_threads` (CPU: at
// most that many pool threads for this call; 0: the pool's size, set_num_threads).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "bind_args.h"
#include "cpu/activations.h"
#include "cpu/attention.h"
#include "cpu/cache_sizes.h"
#include "cpu/cpu_features.h"
#include "cpu/decode_step.h"
#include "cpu/memory_bandwidth.h"
#include "cpu/norms.h"
#include "cpu/quant_formats.h"
#include "cpu/quant_int6.h"
#include "cpu/quant_search.h"
#include "cpu/thread_pool.h"

namespace py = pybind11;
using mpt::bind::Attention;
using mpt::bind::buf;
using mpt::bind::dim;
using mpt::bind::opt;
using mpt::bind::positive;
using mpt::bind::int4_group;

#if MPT_LITE_WITH_CUDA
#include "cuda/ops_cuda.h"
#endif

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
  d["amx_tile"] = f.amx_tile;
  d["amx_bf16"] = f.amx_bf16;
  d["amx_int8"] = f.amx_int8;
  return d;
}

// fmt codes of the CUDA entry points, by name.
[[maybe_unused]] static int format_code(const std::string& name) {
  if (name == "int8") return 0;
  if (name == "nf4") return 1;
  if (name == "int4") return 2;
  throw std::invalid_argument("unknown weight format '" + name + "' (int8, nf4 or int4)");
}

static void bind_structs(py::module_& m) {
  // cache: k, v (num_slots x kv_heads x head_dim values of `dtype`: 0 f32, 1 bf16, 2 f16, 3 int8),
  // k_scale, v_scale (float32, num_slots x kv_heads; int8 caches only, else 0); k_bound (float32, num_slots x
  // kv_heads; float caches, optional).
  py::class_<mpt::KvCacheView>(m, "KvCache")
      .def(py::init(&mpt::bind::kv_cache), py::kw_only(), py::arg("k"), py::arg("v"), py::arg("k_scale") = 0,
           py::arg("v_scale") = 0, py::arg("dtype"), py::arg("num_slots"), py::arg("kv_heads"), py::arg("head_dim"),
           py::arg("block_size"), py::arg("k_bound") = 0)
      .def_readonly("num_slots", &mpt::KvCacheView::num_slots)
      .def_readonly("kv_heads", &mpt::KvCacheView::kv_heads)
      .def_readonly("head_dim", &mpt::KvCacheView::head_dim)
      .def_readonly("block_size", &mpt::KvCacheView::block_size);
  // q, out: num_tokens x num_heads x head_dim float32; block_tables int32 [num_seqs, max_blocks];
  // context_lens int32 [num_seqs]; query_start_loc int32 [num_seqs + 1] (prefill; 0 for decode);
  // slopes float32 [num_heads] (0: no ALiBi).
  py::class_<Attention>(m, "AttnArgs")
      .def(py::init(&mpt::bind::attention), py::kw_only(), py::arg("q"), py::arg("out"), py::arg("num_tokens"),
           py::arg("num_heads"), py::arg("head_dim"), py::arg("num_seqs"), py::arg("block_tables"),
           py::arg("max_blocks"), py::arg("context_lens"), py::arg("query_start_loc") = 0, py::arg("slopes") = 0,
           py::arg("scale"), py::arg("split_tokens") = 0)
      .def_readonly("num_tokens", &Attention::num_tokens)
      .def_readonly("head_dim", &Attention::head_dim);
}

static void bind_quant(py::module_& m) {
  using py::arg;
  const auto kw = py::kw_only();
  const auto nt = arg("num_threads") = 0;
  // int8: cb int8 [n, k], scb float32 [n].
  m.def("quantize_int8", [](uintptr_t w, int64_t n, int64_t k, uintptr_t cb, uintptr_t scb, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k");
    mpt::quantize_int8(buf<const float>(w, n * k, "w"), n, k, buf<int8_t>(cb, n * k, "cb"), buf<float>(scb, n, "scb"));
  }, kw, arg("w"), arg("n"), arg("k"), arg("cb"), arg("scb"), nt, G());
  m.def("dequantize_int8", [](uintptr_t cb, uintptr_t scb, int64_t n, int64_t k, uintptr_t out, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k");
    mpt::dequantize_int8(buf<const int8_t>(cb, n * k, "cb"), buf<const float>(scb, n, "scb"), n, k,
                         buf<float>(out, n * k, "out"));
  }, kw, arg("cb"), arg("scb"), arg("n"), arg("k"), arg("out"), nt, G());
  m.def("dequantize_rows_int8", [](uintptr_t cb, uintptr_t scb, int64_t k, uintptr_t rows, int64_t n_rows,
                                   uintptr_t out, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(k, "k"), dim(n_rows, "n_rows");
    mpt::dequantize_rows_int8(buf<const int8_t>(cb, n_rows ? k : 0, "cb"), buf<const float>(scb, n_rows, "scb"), k,
                              buf<const int64_t>(rows, n_rows, "rows"), n_rows, buf<float>(out, n_rows * k, "out"));
  }, kw, arg("cb"), arg("scb"), arg("k"), arg("rows"), arg("n_rows"), arg("out"), nt, G());
  m.def("matmul_int8", [](uintptr_t x, int64_t m_, int64_t k, uintptr_t cb, uintptr_t scb, int64_t n,
                          uintptr_t bias, uintptr_t y, bool q8, bool bf16, bool rows8, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(m_, "m"), dim(k, "k"), dim(n, "n");
    if (rows8 && !mpt::int8_rows8_ok(n, k))
      throw std::invalid_argument("int8 rows8 weight: n must be a multiple of 8 and k of 32");
    mpt::matmul_int8(buf<const float>(x, m_ * k, "x"), m_, k, buf<const int8_t>(cb, n * k, "cb"),
                     buf<const float>(scb, n, "scb"), n, opt<const float>(bias), buf<float>(y, m_ * n, "y"), q8, bf16,
                     rows8);
  }, kw, arg("x"), arg("m"), arg("k"), arg("cb"), arg("scb"), arg("n"), arg("bias") = 0, arg("y"), arg("q8"),
     arg("bf16") = false, arg("rows8") = false, nt, G());
  m.def("dequantize_rows_int8_rows8", [](uintptr_t cb, uintptr_t scb, int64_t n, int64_t k, uintptr_t rows,
                                         int64_t n_rows, uintptr_t out, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k"), dim(n_rows, "n_rows");
    mpt::dequantize_rows_int8_rows8(buf<const int8_t>(cb, n * k, "cb"), buf<const float>(scb, n, "scb"), n, k,
                                    buf<const int64_t>(rows, n_rows, "rows"), n_rows, buf<float>(out, n_rows * k, "out"));
  }, kw, arg("cb"), arg("scb"), arg("n"), arg("k"), arg("rows"), arg("n_rows"), arg("out"), nt, G());
  // int8's rows8 layout (quant_formats.h) from the row layout (to_rows8) or back; n a multiple of 8, k of 32.
  m.def("int8_rows8", [](uintptr_t cb, int64_t n, int64_t k, uintptr_t out, bool to_rows8, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k");
    auto* convert = to_rows8 ? &mpt::int8_to_rows8 : &mpt::int8_from_rows8;  // they check n and k
    convert(buf<const int8_t>(cb, n * k, "cb"), n, k, buf<int8_t>(out, n * k, "out"));
  }, kw, arg("cb"), arg("n"), arg("k"), arg("out"), arg("to_rows8"), nt, G());

  // nf4: packed uint8 [ceil(numel / 2)], absmax float32 [ceil(numel / blocksize)].
  m.def("quantize_nf4", [](uintptr_t w, int64_t numel, int64_t bs, uintptr_t packed, uintptr_t absmax,
                           int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(numel, "numel"), positive(bs, "blocksize");
    mpt::quantize_nf4(buf<const float>(w, numel, "w"), numel, bs, buf<uint8_t>(packed, (numel + 1) / 2, "packed"),
                      buf<float>(absmax, (numel + bs - 1) / bs, "absmax"));
  }, kw, arg("w"), arg("numel"), arg("blocksize"), arg("packed"), arg("absmax"), nt, G());
  m.def("dequantize_nf4", [](uintptr_t packed, uintptr_t absmax, int64_t numel, int64_t bs, uintptr_t out,
                             int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(numel, "numel"), positive(bs, "blocksize");
    mpt::dequantize_nf4(buf<const uint8_t>(packed, (numel + 1) / 2, "packed"),
                        buf<const float>(absmax, (numel + bs - 1) / bs, "absmax"), numel, bs,
                        buf<float>(out, numel, "out"));
  }, kw, arg("packed"), arg("absmax"), arg("numel"), arg("blocksize"), arg("out"), nt, G());
  m.def("dequantize_rows_nf4", [](uintptr_t packed, uintptr_t absmax, int64_t k, int64_t bs, uintptr_t rows,
                                  int64_t n_rows, uintptr_t out, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(k, "k"), positive(bs, "blocksize"), dim(n_rows, "n_rows");
    mpt::dequantize_rows_nf4(buf<const uint8_t>(packed, n_rows ? (k + 1) / 2 : 0, "packed"),
                             buf<const float>(absmax, n_rows, "absmax"), k, bs, buf<const int64_t>(rows, n_rows, "rows"),
                             n_rows, buf<float>(out, n_rows * k, "out"));
  }, kw, arg("packed"), arg("absmax"), arg("k"), arg("blocksize"), arg("rows"), arg("n_rows"), arg("out"), nt, G());
  m.def("matmul_nf4", [](uintptr_t x, int64_t m_, int64_t k, uintptr_t packed, uintptr_t absmax, int64_t n,
                         int64_t bs, uintptr_t bias, uintptr_t y, bool q8, bool bf16, bool rows8, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(m_, "m"), dim(k, "k"), dim(n, "n"), positive(bs, "blocksize");
    if (rows8 && !mpt::nf4_q8_ok(k, bs))
      throw std::invalid_argument("nf4 rows8 weight: needs a power-of-two blocksize >= 32 that divides k");
    mpt::matmul_nf4(buf<const float>(x, m_ * k, "x"), m_, k, buf<const uint8_t>(packed, (n * k + 1) / 2, "packed"),
                    buf<const float>(absmax, (n * k + bs - 1) / bs, "absmax"), n, bs, opt<const float>(bias),
                    buf<float>(y, m_ * n, "y"), q8, bf16, rows8);
  }, kw, arg("x"), arg("m"), arg("k"), arg("packed"), arg("absmax"), arg("n"), arg("blocksize"), arg("bias") = 0,
     arg("y"), arg("q8") = false, arg("bf16") = false, arg("rows8") = false, nt, G());
  // nf4's rows8 layout (quant_formats.h) from bitsandbytes' (to_rows8) or back; n a multiple of 8, nf4_q8_ok.
  m.def("nf4_rows8", [](uintptr_t packed, uintptr_t absmax, int64_t n, int64_t k, int64_t bs, uintptr_t out_packed,
                        uintptr_t out_absmax, bool to_rows8, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k"), positive(bs, "blocksize");
    auto* convert = to_rows8 ? &mpt::nf4_to_rows8 : &mpt::nf4_from_rows8;
    convert(buf<const uint8_t>(packed, n * k / 2, "packed"), buf<const float>(absmax, n * k / bs, "absmax"), n, k, bs,
            buf<uint8_t>(out_packed, n * k / 2, "out_packed"), buf<float>(out_absmax, n * k / bs, "out_absmax"));
  }, kw, arg("packed"), arg("absmax"), arg("n"), arg("k"), arg("blocksize"), arg("out_packed"), arg("out_absmax"),
     arg("to_rows8"), nt, G());

  // int4: packed uint8 [n, ceil(k / 32) * 16], scales float16 (IEEE half bits) [n, groups], groups =
  // ceil(k / group), group 32 (default), 64, 128 or 256 k per scale.
  // Raw addresses carry no dtype: mpt_lite/kernels/quant_ops.py rejects float32 scales (the layout
  // before format version 3) with an error that says how to convert them.
  m.def("quantize_int4", [](uintptr_t w, int64_t n, int64_t k, uintptr_t packed, uintptr_t scales, int64_t group,
                            int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k"), int4_group(group);
    const int64_t g = mpt::int4_groups(k), c = mpt::int4_groups(k, group);
    mpt::quantize_int4(buf<const float>(w, n * k, "w"), n, k, buf<uint8_t>(packed, n * g * 16, "packed"),
                       buf<uint16_t>(scales, n * c, "scales"), group);
  }, kw, arg("w"), arg("n"), arg("k"), arg("packed"), arg("scales"), arg("group") = 32, nt, G());
  // the searched quantizers (csrc/cpu/quant_search.h): the same layouts, scales chosen for least error
  m.def("search_quantize_int4", [](uintptr_t w, int64_t n, int64_t k, uintptr_t packed, uintptr_t scales,
                                   int64_t group, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k"), int4_group(group);
    const int64_t g = mpt::int4_groups(k), c = mpt::int4_groups(k, group);
    mpt::search_quantize_int4(buf<const float>(w, n * k, "w"), n, k, buf<uint8_t>(packed, n * g * 16, "packed"),
                              buf<uint16_t>(scales, n * c, "scales"), group);
  }, kw, arg("w"), arg("n"), arg("k"), arg("packed"), arg("scales"), arg("group") = 32, nt, G());
  m.def("search_quantize_nf4", [](uintptr_t w, int64_t numel, int64_t bs, uintptr_t packed, uintptr_t absmax,
                                  int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(numel, "numel"), positive(bs, "blocksize");
    mpt::search_quantize_nf4(buf<const float>(w, numel, "w"), numel, bs,
                             buf<uint8_t>(packed, (numel + 1) / 2, "packed"),
                             buf<float>(absmax, (numel + bs - 1) / bs, "absmax"));
  }, kw, arg("w"), arg("numel"), arg("blocksize"), arg("packed"), arg("absmax"), nt, G());
  m.def("dequantize_int4", [](uintptr_t packed, uintptr_t scales, int64_t n, int64_t k, uintptr_t out,
                              int64_t group, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k"), int4_group(group);
    const int64_t g = mpt::int4_groups(k), c = mpt::int4_groups(k, group);
    mpt::dequantize_int4(buf<const uint8_t>(packed, n * g * 16, "packed"), buf<const uint16_t>(scales, n * c, "scales"),
                         n, k, buf<float>(out, n * k, "out"), group);
  }, kw, arg("packed"), arg("scales"), arg("n"), arg("k"), arg("out"), arg("group") = 32, nt, G());
  m.def("dequantize_rows_int4", [](uintptr_t packed, uintptr_t scales, int64_t k, uintptr_t rows, int64_t n_rows,
                                   uintptr_t out, int64_t group, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(k, "k"), dim(n_rows, "n_rows"), int4_group(group);
    const int64_t g = n_rows ? mpt::int4_groups(k) : 0, c = n_rows ? mpt::int4_groups(k, group) : 0;
    mpt::dequantize_rows_int4(buf<const uint8_t>(packed, g * 16, "packed"), buf<const uint16_t>(scales, c, "scales"), k,
                              buf<const int64_t>(rows, n_rows, "rows"), n_rows, buf<float>(out, n_rows * k, "out"), group);
  }, kw, arg("packed"), arg("scales"), arg("k"), arg("rows"), arg("n_rows"), arg("out"), arg("group") = 32, nt, G());
  m.def("matmul_int4", [](uintptr_t x, int64_t m_, int64_t k, uintptr_t packed, uintptr_t scales, int64_t n,
                          uintptr_t bias, uintptr_t y, bool q8, bool bf16, bool rows8, int64_t group, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(m_, "m"), dim(k, "k"), dim(n, "n"), int4_group(group);
    const int64_t g = mpt::int4_groups(k), c = mpt::int4_groups(k, group);
    mpt::matmul_int4(buf<const float>(x, m_ * k, "x"), m_, k, buf<const uint8_t>(packed, n * g * 16, "packed"),
                     buf<const uint16_t>(scales, n * c, "scales"), n, opt<const float>(bias), buf<float>(y, m_ * n, "y"),
                     q8, bf16, rows8, group);
  }, kw, arg("x"), arg("m"), arg("k"), arg("packed"), arg("scales"), arg("n"), arg("bias") = 0, arg("y"), arg("q8"),
     arg("bf16") = false, arg("rows8") = false, arg("group") = 32, nt, G());
  // int4's rows8 layout (quant_formats.h) from the row layout (to_rows8) or back; n a multiple of 8.
  m.def("int4_rows8", [](uintptr_t packed, uintptr_t scales, int64_t n, int64_t k, uintptr_t out_packed,
                         uintptr_t out_scales, bool to_rows8, int64_t group, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k"), int4_group(group);
    const int64_t g = mpt::int4_groups(k), c = mpt::int4_groups(k, group);
    auto* convert = to_rows8 ? &mpt::int4_to_rows8 : &mpt::int4_from_rows8;
    convert(buf<const uint8_t>(packed, n * g * 16, "packed"), buf<const uint16_t>(scales, n * c, "scales"), n, k,
            buf<uint8_t>(out_packed, n * g * 16, "out_packed"), buf<uint16_t>(out_scales, n * c, "out_scales"), group);
  }, kw, arg("packed"), arg("scales"), arg("n"), arg("k"), arg("out_packed"), arg("out_scales"), arg("to_rows8"),
     arg("group") = 32, nt, G());

  // int6 (quant_int6.h): codes uint8 [n, ceil(k / 32) * 24], scales float16 (IEEE half bits) [n, ceil(k / 32)].
  m.def("quantize_int6", [](uintptr_t w, int64_t n, int64_t k, uintptr_t codes, uintptr_t scales, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k");
    mpt::quantize_int6(buf<const float>(w, n * k, "w"), n, k, buf<uint8_t>(codes, n * mpt::int6_row_bytes(k), "codes"),
                       buf<uint16_t>(scales, n * mpt::int4_groups(k), "scales"));
  }, kw, arg("w"), arg("n"), arg("k"), arg("codes"), arg("scales"), nt, G());
  m.def("dequantize_int6", [](uintptr_t codes, uintptr_t scales, int64_t n, int64_t k, uintptr_t out, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(n, "n"), dim(k, "k");
    mpt::dequantize_int6(buf<const uint8_t>(codes, n * mpt::int6_row_bytes(k), "codes"),
                         buf<const uint16_t>(scales, n * mpt::int4_groups(k), "scales"), n, k, buf<float>(out, n * k, "out"));
  }, kw, arg("codes"), arg("scales"), arg("n"), arg("k"), arg("out"), nt, G());
  // rows: indices checked by the caller (kernels/int6_ops.py) against n
  m.def("dequantize_rows_int6", [](uintptr_t codes, uintptr_t scales, int64_t k, uintptr_t rows, int64_t n_rows,
                                   uintptr_t out, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(k, "k"), dim(n_rows, "n_rows");
    mpt::dequantize_rows_int6(buf<const uint8_t>(codes, n_rows ? mpt::int6_row_bytes(k) : 0, "codes"),
                              buf<const uint16_t>(scales, n_rows ? mpt::int4_groups(k) : 0, "scales"), k,
                              buf<const int64_t>(rows, n_rows, "rows"), n_rows, buf<float>(out, n_rows * k, "out"));
  }, kw, arg("codes"), arg("scales"), arg("k"), arg("rows"), arg("n_rows"), arg("out"), nt, G());
  m.def("matmul_int6", [](uintptr_t x, int64_t m_, int64_t k, uintptr_t codes, uintptr_t scales, int64_t n,
                          uintptr_t bias, uintptr_t y, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    dim(m_, "m"), dim(k, "k"), dim(n, "n");
    mpt::matmul_int6(buf<const float>(x, m_ * k, "x"), m_, k, buf<const uint8_t>(codes, n * mpt::int6_row_bytes(k), "codes"),
                     buf<const uint16_t>(scales, n * mpt::int4_groups(k), "scales"), n, opt<const float>(bias),
                     buf<float>(y, m_ * n, "y"));
  }, kw, arg("x"), arg("m"), arg("k"), arg("codes"), arg("scales"), arg("n"), arg("bias") = 0, arg("y"), nt, G());
}

static void bind_attention(py::module_& m) {
  using py::arg;
  // key, value: float32 [n_tokens, kv_heads, head_dim]; slot_mapping int64 [n_tokens] (< 0 skips).
  m.def("write_kv_cache", [](uintptr_t key, uintptr_t value, int64_t n_tokens, uintptr_t slots,
                             const mpt::KvCacheView& c, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    const int64_t n = dim(n_tokens, "n_tokens") * c.kv_heads * c.head_dim;
    mpt::write_kv_cache(buf<const float>(key, n, "key"), buf<const float>(value, n, "value"), n_tokens,
                        buf<const int64_t>(slots, n_tokens, "slot_mapping"), c);
  }, py::kw_only(), arg("key"), arg("value"), arg("n_tokens"), arg("slot_mapping"), arg("cache"),
     arg("num_threads") = 0, G());
  m.def("paged_attention", [](bool decode, const Attention& at, const mpt::KvCacheView& c, int nthreads) {
    mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
    mpt::bind::check_attention(at, c, decode);
    if (decode) mpt::paged_attention_decode(at.a, c);
    else mpt::paged_attention_prefill(at.a, c);
  }, py::kw_only(), arg("decode"), arg("args"), arg("cache"), arg("num_threads") = 0, G());
  m.def("set_alibi_pruning", &mpt::set_alibi_pruning, arg("on"));
  m.def("alibi_pruning", &mpt::alibi_pruning);
  m.def("alibi_pruning_stats", [](bool reset) {
    int64_t skipped = 0, seen = 0;
    mpt::alibi_pruning_stats(&skipped, &seen, reset);
    return py::make_tuple(skipped, seen);
  }, py::kw_only(), arg("reset") = false);
  // y = exp(x) (float32, n each) by the attention kernels' vector exp of the current variant.
  m.def("attention_exp", [](uintptr_t x, uintptr_t y, int64_t n) {
    mpt::attention_exp(buf<const float>(x, n, "x"), buf<float>(y, n, "y"), dim(n, "n"));
  }, py::kw_only(), arg("x"), arg("y"), arg("n"), G());
  // x = GELU(x) in place (float32, n), as the native step computes it with the current variant.
  m.def("gelu_inplace", [](uintptr_t x, int64_t n) { mpt::gelu_inplace(buf<float>(x, n, "x"), dim(n, "n")); },
        py::kw_only(), arg("x"), arg("n"), G());
  // y = LayerNorm of m rows of d float32 (weight and bias: d each, bias may be 0; y may be x), on the pool.
  m.def("layer_norm_rows", [](uintptr_t x, uintptr_t weight, uintptr_t bias, int64_t m, int64_t d, double eps,
                              uintptr_t y) {
    const int64_t n = dim(m, "m") * dim(d, "d");
    mpt::layer_norm_rows(buf<const float>(x, n, "x"), buf<const float>(weight, d, "weight"),
                         bias ? buf<const float>(bias, d, "bias") : nullptr, m, d, float(eps), buf<float>(y, n, "y"));
  }, py::kw_only(), arg("x"), arg("weight"), arg("bias"), arg("m"), arg("d"), arg("eps"), arg("y"), G());
  // x += y (float32, n each) on the pool.
  m.def("add_inplace", [](uintptr_t x, uintptr_t y, int64_t n) {
    mpt::add_inplace(buf<float>(x, n, "x"), buf<const float>(y, n, "y"), dim(n, "n"));
  }, py::kw_only(), arg("x"), arg("y"), arg("n"), G());
  // dst (m x width float32) = columns [col, col + width) of src (m rows, stride floats apart), on the pool.
  m.def("copy_columns", [](uintptr_t src, int64_t m, int64_t stride, int64_t col, int64_t width, uintptr_t dst) {
    if (col < 0 || width < 0 || col + width > stride)
      throw std::invalid_argument("copy_columns: columns [" + std::to_string(col) + ", " + std::to_string(col + width) +
                                  ") are outside rows of " + std::to_string(stride));
    mpt::copy_columns(buf<const float>(src, m > 0 ? (m - 1) * stride + col + width : 0, "src"), dim(m, "m"), stride,
                      col, width, buf<float>(dst, m * width, "dst"));
  }, py::kw_only(), arg("src"), arg("m"), arg("stride"), arg("col"), arg("width"), arg("dst"), G());
}

#if MPT_LITE_WITH_CUDA
// CUDA (csrc/cuda/*.cu): the same ops on device pointers; every call takes the device index and
// torch's current stream (an integer), and returns once the work is enqueued.
static void bind_cuda(py::module_& m) {
  using py::arg;
  using mpt::cuda::Launch;
  const auto kw = py::kw_only();
  m.def("quantize_int8_cuda", [](int dev, uintptr_t st, uintptr_t w, int64_t n, int64_t k, uintptr_t cb,
                                 uintptr_t scb) {
    dim(n, "n"), dim(k, "k");
    mpt::cuda::quantize_int8(Launch{dev, st}, buf<const float>(w, n * k, "w"), n, k, buf<int8_t>(cb, n * k, "cb"),
                             buf<float>(scb, n, "scb"));
  }, kw, arg("device"), arg("stream"), arg("w"), arg("n"), arg("k"), arg("cb"), arg("scb"), G());
  m.def("quantize_nf4_cuda", [](int dev, uintptr_t st, uintptr_t w, int64_t numel, int64_t bs, uintptr_t packed,
                                uintptr_t absmax) {
    dim(numel, "numel"), positive(bs, "blocksize");
    mpt::cuda::quantize_nf4(Launch{dev, st}, buf<const float>(w, numel, "w"), numel, bs,
                            buf<uint8_t>(packed, (numel + 1) / 2, "packed"),
                            buf<float>(absmax, (numel + bs - 1) / bs, "absmax"));
  }, kw, arg("device"), arg("stream"), arg("w"), arg("numel"), arg("blocksize"), arg("packed"), arg("absmax"), G());
  m.def("quantize_int4_cuda", [](int dev, uintptr_t st, uintptr_t w, int64_t n, int64_t k, uintptr_t packed,
                                 uintptr_t scales) {
    dim(n, "n"), dim(k, "k");
    const int64_t g = mpt::int4_groups(k);
    mpt::cuda::quantize_int4(Launch{dev, st}, buf<const float>(w, n * k, "w"), n, k,
                             buf<uint8_t>(packed, n * g * 16, "packed"), buf<uint16_t>(scales, n * g, "scales"));
  }, kw, arg("device"), arg("stream"), arg("w"), arg("n"), arg("k"), arg("packed"), arg("scales"), G());
  // format: "int8" (data = cb, scale = scb), "nf4" (packed, absmax; blocksize), "int4" (packed, scales).
  m.def("dequantize_cuda", [](int dev, uintptr_t st, const std::string& fmt, uintptr_t data, uintptr_t scale,
                              int64_t n, int64_t k, int64_t bs, uintptr_t out) {
    dim(n, "n"), dim(k, "k"), dim(bs, "blocksize");
    mpt::cuda::dequantize(Launch{dev, st}, format_code(fmt), buf<const void>(data, n * k, "data"),
                          buf<const void>(scale, n * k ? 1 : 0, "scale"), n, k, bs, buf<float>(out, n * k, "out"));
  }, kw, arg("device"), arg("stream"), arg("format"), arg("data"), arg("scale"), arg("n"), arg("k"),
     arg("blocksize") = 0, arg("out"), G());
  m.def("dequantize_rows_cuda", [](int dev, uintptr_t st, const std::string& fmt, uintptr_t data, uintptr_t scale,
                                   int64_t n, int64_t k, int64_t bs, uintptr_t rows, int64_t n_rows, uintptr_t out) {
    dim(n, "n"), dim(k, "k"), dim(bs, "blocksize"), dim(n_rows, "n_rows");
    mpt::cuda::dequantize_rows(Launch{dev, st}, format_code(fmt), buf<const void>(data, n * k, "data"),
                               buf<const void>(scale, n * k ? 1 : 0, "scale"), n, k, bs,
                               buf<const int64_t>(rows, n_rows, "rows"), n_rows, buf<float>(out, n_rows * k, "out"));
  }, kw, arg("device"), arg("stream"), arg("format"), arg("data"), arg("scale"), arg("n"), arg("k"),
     arg("blocksize") = 0, arg("rows"), arg("n_rows"), arg("out"), G());
  m.def("operand_bf16_cuda", [](int dev, uintptr_t st, const std::string& fmt, uintptr_t data, uintptr_t scale,
                                int64_t n, int64_t k, int64_t bs, int64_t row0, int64_t n_rows, uintptr_t out) {
    dim(n, "n"), dim(k, "k"), dim(bs, "blocksize"), dim(row0, "row0"), dim(n_rows, "n_rows");
    mpt::cuda::operand_bf16(Launch{dev, st}, format_code(fmt), buf<const void>(data, n * k, "data"),
                            buf<const void>(scale, n * k ? 1 : 0, "scale"), n, k, bs, row0, n_rows,
                            buf<uint16_t>(out, n_rows * k, "out"));
  }, kw, arg("device"), arg("stream"), arg("format"), arg("data"), arg("scale"), arg("n"), arg("k"),
     arg("blocksize") = 0, arg("row0") = 0, arg("n_rows"), arg("out"), G());
  m.def("matmul_cuda", [](int dev, uintptr_t st, const std::string& fmt, uintptr_t x, int64_t m_, uintptr_t data,
                          uintptr_t scale, int64_t n, int64_t k, int64_t bs, uintptr_t bias, uintptr_t y) {
    dim(m_, "m"), dim(n, "n"), dim(k, "k"), dim(bs, "blocksize");
    mpt::cuda::qmatmul(Launch{dev, st}, format_code(fmt), buf<const float>(x, m_ * k, "x"), m_,
                       buf<const void>(data, n * k, "data"), buf<const void>(scale, n * k ? 1 : 0, "scale"), n, k, bs,
                       opt<const float>(bias), buf<float>(y, m_ * n, "y"));
  }, kw, arg("device"), arg("stream"), arg("format"), arg("x"), arg("m"), arg("data"), arg("scale"), arg("n"),
     arg("k"), arg("blocksize") = 0, arg("bias") = 0, arg("y"), G());
  m.attr("cuda_gemv_max_m") = mpt::cuda::kGemvMaxM;
  // *_host: CPU copies of the index arrays (checked, and read for the launch geometry).
  m.def("write_kv_cache_cuda", [](int dev, uintptr_t st, uintptr_t key, uintptr_t value, int64_t n_tokens,
                                  uintptr_t slots, uintptr_t slots_host, const mpt::KvCacheView& c) {
    const int64_t n = dim(n_tokens, "n_tokens") * c.kv_heads * c.head_dim;
    mpt::cuda::write_kv_cache(Launch{dev, st}, buf<const float>(key, n, "key"), buf<const float>(value, n, "value"),
                              n_tokens, buf<const int64_t>(slots, n_tokens, "slot_mapping"),
                              buf<const int64_t>(slots_host, n_tokens, "slot_mapping_host"), c);
  }, kw, arg("device"), arg("stream"), arg("key"), arg("value"), arg("n_tokens"), arg("slot_mapping"),
     arg("slot_mapping_host"), arg("cache"), G());
  // The float32 workspace (elements) paged_attention_cuda needs for these arguments; the caller
  // allocates it (torch's allocator) and passes it in.
  m.def("paged_attention_cuda_workspace", [](bool decode, const Attention& host, const mpt::KvCacheView& c) {
    mpt::bind::check_attention(host, c, decode);
    return mpt::cuda::paged_attention_workspace(decode, host.a, host.num_tokens, c);
  }, kw, arg("decode"), arg("args_host"), arg("cache"), G());
  m.def("paged_attention_cuda", [](int dev, uintptr_t st, bool decode, const Attention& a, const Attention& host,
                                   const mpt::KvCacheView& c, uintptr_t workspace, int64_t workspace_size) {
    mpt::bind::check_attention(host, c, decode);
    if (a.num_tokens != host.num_tokens || a.a.num_seqs != host.a.num_seqs || a.a.max_blocks != host.a.max_blocks)
      throw std::invalid_argument("args and args_host describe different batches");
    dim(workspace_size, "workspace_size");
    mpt::cuda::paged_attention(Launch{dev, st}, decode, a.a, host.a, host.num_tokens, c,
                               buf<float>(workspace, workspace_size, "workspace"), workspace_size);
  }, kw, arg("device"), arg("stream"), arg("decode"), arg("args"), arg("args_host"), arg("cache"),
     arg("workspace") = 0, arg("workspace_size") = 0, G());
}
#endif

static void bind_decode_step(py::module_& m) {
  // ---- the engine's whole forward pass in one call (csrc/cpu/decode_step.h); keyword arguments
  // only. fmt: -1 float32, 0 int8, 1 nf4, 2 int4, 3 int4 rows8, 4 nf4 rows8, 5 int8 rows8 (StepFormat). ----
  py::class_<mpt::DecodePlan>(m, "DecodePlan")
      .def(py::init([](int64_t d_model, int64_t n_heads, int64_t kv_heads, int64_t head_dim, int64_t ffn,
                       int64_t vocab, int64_t n_layers, float eps, float clip_qkv, float softmax_scale,
                       float logit_scale, bool has_logit_scale, uintptr_t slopes, int64_t q8_max_rows,
                       int64_t q8_gemm_min_k, int64_t bf16_min_rows) {
             mpt::StepConfig c;
             c.d_model = d_model, c.n_heads = n_heads, c.kv_heads = kv_heads, c.head_dim = head_dim, c.ffn = ffn;
             c.vocab = vocab, c.n_layers = n_layers, c.eps = eps, c.clip_qkv = clip_qkv;
             c.softmax_scale = softmax_scale, c.logit_scale = logit_scale, c.has_logit_scale = has_logit_scale;
             c.slopes = mpt::bind::opt<const float>(slopes), c.q8_max_rows = q8_max_rows;
             c.q8_gemm_min_k = q8_gemm_min_k, c.bf16_min_rows = bf16_min_rows;
             return new mpt::DecodePlan(c);
           }),
           py::kw_only(), py::arg("d_model"), py::arg("n_heads"), py::arg("kv_heads"), py::arg("head_dim"),
           py::arg("ffn"), py::arg("vocab"), py::arg("n_layers"), py::arg("eps"), py::arg("clip_qkv"),
           py::arg("softmax_scale"), py::arg("logit_scale"), py::arg("has_logit_scale"), py::arg("slopes"),
           py::arg("q8_max_rows"), py::arg("q8_gemm_min_k"), py::arg("bf16_min_rows") = 0)
      .def("set_weight", [](mpt::DecodePlan& p, int64_t layer, const std::string& name, int fmt, int64_t n,
                            int64_t k, int64_t blocksize, uintptr_t data, uintptr_t scale, uintptr_t bias) {
             if (fmt < -1 || fmt > 6) throw std::invalid_argument("unknown weight format code");
             if ((fmt == static_cast<int>(mpt::StepFormat::Int4Rows8) || fmt == static_cast<int>(mpt::StepFormat::Nf4Rows8)) &&
                 n % 8 != 0)
               throw std::invalid_argument("rows8 weight: n must be a multiple of 8");
             if (fmt == static_cast<int>(mpt::StepFormat::Nf4Rows8) && !mpt::nf4_q8_ok(k, blocksize))
               throw std::invalid_argument("nf4 rows8 weight: needs a power-of-two blocksize >= 32 that divides k");
             if (fmt == static_cast<int>(mpt::StepFormat::Int8Rows8) && !mpt::int8_rows8_ok(n, k))
               throw std::invalid_argument("int8 rows8 weight: n must be a multiple of 8 and k of 32");
             mpt::StepWeight& w = p.weight(layer, name);
             w.fmt = static_cast<mpt::StepFormat>(fmt), w.N = n, w.K = k, w.blocksize = blocksize;
             w.data = mpt::bind::buf<const void>(data, n * k, "data"), w.scale = mpt::bind::opt<const void>(scale);
             w.bias = mpt::bind::opt<const float>(bias);
           },
           py::kw_only(), py::arg("layer"), py::arg("name"), py::arg("fmt"), py::arg("n"), py::arg("k"),
           py::arg("blocksize"), py::arg("data"), py::arg("scale"), py::arg("bias"))
      .def("set_norm", [](mpt::DecodePlan& p, int64_t layer, const std::string& name, uintptr_t weight,
                          uintptr_t bias) {
             mpt::StepNorm& n = p.norm(layer, name);
             n.weight = mpt::bind::buf<const float>(weight, 1, "weight"), n.bias = mpt::bind::opt<const float>(bias);
           },
           py::kw_only(), py::arg("layer"), py::arg("name"), py::arg("weight"), py::arg("bias"))
      .def("set_cache", [](mpt::DecodePlan& p, int64_t layer, uintptr_t k, uintptr_t v, uintptr_t k_scale,
                           uintptr_t v_scale, int dtype, int64_t num_slots, int kv_heads, int head_dim,
                           int block_size, uintptr_t k_bound) {
             mpt::StepLayer& l = p.layer(layer);
             l.cache = mpt::bind::kv_cache(k, v, k_scale, v_scale, dtype, num_slots, kv_heads, head_dim, block_size,
                                           k_bound);
             l.has_cache = true;
           },
           py::kw_only(), py::arg("layer"), py::arg("k"), py::arg("v"), py::arg("k_scale"), py::arg("v_scale"),
           py::arg("dtype"), py::arg("num_slots"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("block_size"),
           py::arg("k_bound") = 0)
      .def("validate", &mpt::DecodePlan::validate)
      .def("step", [](mpt::DecodePlan& p, uintptr_t ids, int64_t n_tokens, uintptr_t slots, uintptr_t block_tables,
                      int num_seqs, int max_blocks, uintptr_t context_lens, uintptr_t query_start_loc, bool decode,
                      uintptr_t rows, int64_t n_rows, uintptr_t logits, int nthreads) {
             using mpt::bind::buf;
             mpt::StepBatch b;
             b.ids = buf<const int64_t>(ids, n_tokens, "ids"), b.n_tokens = mpt::bind::dim(n_tokens, "n_tokens");
             b.slots = buf<const int64_t>(slots, n_tokens, "slots");
             b.block_tables = buf<const int32_t>(block_tables, int64_t(num_seqs) * max_blocks, "block_tables");
             b.num_seqs = num_seqs, b.max_blocks = max_blocks;
             b.context_lens = buf<const int32_t>(context_lens, num_seqs, "context_lens");
             b.query_start_loc = mpt::bind::opt<const int32_t>(query_start_loc);
             b.decode = decode, b.rows = buf<const int64_t>(rows, n_rows, "rows"), b.n_rows = n_rows;
             b.logits = buf<float>(logits, n_rows, "logits");
             py::gil_scoped_release nogil;
             mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
             p.step(b);
           },
           py::kw_only(), py::arg("ids"), py::arg("n_tokens"), py::arg("slots"), py::arg("block_tables"),
           py::arg("num_seqs"), py::arg("max_blocks"), py::arg("context_lens"), py::arg("query_start_loc"),
           py::arg("decode"), py::arg("rows"), py::arg("n_rows"), py::arg("logits"), py::arg("num_threads") = 0);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "mpt_lite kernels (no torch linkage; see mpt_lite/kernels)";

  // ---- CPU features, kernel variant, threads ----
  m.def("cpu_features", &cpu_features_dict, "CPU features detected at run time");
  m.def("supported_isas", &mpt::supported_isa_names, "kernel variants this CPU can run");
  m.def("current_isa", [] { return std::string(mpt::isa_name(mpt::current_isa())); });
  m.def("set_isa", [](const std::string& name) { mpt::set_isa(mpt::isa_from_name(name)); }, py::arg("name"));
  m.def("amx_supported", &mpt::amx_supported, "AMX tiles compiled in, on this CPU, and allowed by the OS");
  m.def("amx_enabled", &mpt::amx_enabled, "the bf16 AMX tiles take many-row matmuls now");
  m.def("amx_int8_enabled", &mpt::amx_int8_enabled, "the AMX-INT8 tiles take q8 matmuls of a few rows now");
  m.def("set_amx", &mpt::set_amx, py::arg("on"));
  m.def("num_threads", &mpt::num_threads, G());
  // Waits for the job running on the pool (the GIL is released meanwhile).
  m.def("set_num_threads", &mpt::set_num_threads, py::arg("n"), G());

  // The memory read-bandwidth yardstick (benchmarks): bytes 0 picks 4x the last-level cache.
  // Runs a measurement without the GIL on at most nthreads pool threads; returns its result as a dict.
  auto measured = [](int nthreads, auto&& measure) {
    mpt::ReadBandwidth r;
    {
      py::gil_scoped_release nogil;
      mpt::ThreadLimit lim(mpt::bind::threads(nthreads));
      r = measure();
    }
    py::dict d;
    d["bytes"] = r.bytes, d["threads"] = r.threads, d["checksum"] = r.checksum;
    d["seconds"] = r.seconds, d["cpu_seconds"] = r.cpu_seconds;
    return d;
  };
  m.def("last_level_cache_bytes", &mpt::largest_cache_bytes);
  m.def("default_read_bytes", &mpt::default_stream_bytes);
  m.def(
      "read_bandwidth",
      [measured](int64_t bytes, int repeats, int nthreads) {
        return measured(nthreads, [&] { return mpt::measure_read_bandwidth(bytes, repeats); });
      },
      py::kw_only(), py::arg("bytes") = 0, py::arg("repeats") = 5, py::arg("num_threads") = 0);
  m.def(
      "read_buffer_bandwidth",
      [measured](uintptr_t ptr, int64_t bytes, int repeats, int nthreads) {
        const auto* p = reinterpret_cast<const uint8_t*>(ptr);
        return measured(nthreads, [&] { return mpt::read_passes(p, bytes, repeats); });
      },
      py::kw_only(), py::arg("ptr"), py::arg("bytes"), py::arg("repeats") = 1, py::arg("num_threads") = 0);

  bind_structs(m);
  bind_quant(m);
  bind_attention(m);
  bind_decode_step(m);
#if MPT_LITE_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("cuda_device_count", &mpt::cuda::device_count);
  bind_cuda(m);
#else
  m.attr("with_cuda") = false;
  m.def("cuda_device_count", [] { return 0; });
#endif
}
