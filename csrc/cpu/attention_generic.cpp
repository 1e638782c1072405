// Portable attention kernels (plain C++; the compiler may still auto-vectorise for the base ISA).
#include "cpu/attention_kernel.h"

namespace mpt::attention_generic {
namespace {

inline float widen(float x) { return x; }
inline float widen(uint16_t x) { return attn_detail::bf16_to_f32(x); }
inline float widen(int8_t x) { return float(x); }

struct Ops {
  static constexpr bool kTileRows = false;  // no prefill tile kernel (attend_range's rows one by one)
  static constexpr bool kQ4Rows = false;  // 4-bit rows go through dequantized copies (packed_rows)
  static constexpr bool kTouchAhead = false;
  // sc[j] = q . k_j for n keys, D values each, k_j at k + j * st.
  template <class T>
  static void scores(const float* q, const T* k, int64_t st, int n, int D, float* sc) {
    for (int j = 0; j < n; ++j) {
      const T* kj = k + j * st;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int i = 0;
      for (; i + 4 <= D; i += 4) {
        s0 += q[i] * widen(kj[i]);
        s1 += q[i + 1] * widen(kj[i + 1]);
        s2 += q[i + 2] * widen(kj[i + 2]);
        s3 += q[i + 3] * widen(kj[i + 3]);
      }
      for (; i < D; ++i) s0 += q[i] * widen(kj[i]);
      sc[j] = (s0 + s1) + (s2 + s3);
    }
  }

  // acc += sum_j p[j] v_j.
  template <class T>
  static void accum(const float* p, const T* v, int64_t st, int n, int D, float* acc) {
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < D; ++i) acc[i] += p[j] * widen(v[j * st + i]);
  }
  static float vmax(const float* x, int n) {
    float m = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; ++i) m = std::max(m, x[i]);
    return m;
  }
  static float exp_sum(float* x, int n, float mx) {
    float s = 0;
    for (int i = 0; i < n; ++i) s += (x[i] = std::exp(x[i] - mx));
    return s;
  }
  static void axpy(float a, const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] += a * x[i];
  }
  static void scale(float* y, float a, int n) {
    for (int i = 0; i < n; ++i) y[i] *= a;
  }
  static void f16_to_f32(const uint16_t* s, float* d, int n) {
    for (int i = 0; i < n; ++i) d[i] = attn_detail::f16_to_f32(s[i]);
  }
  static void f32_to_bf16(const float* s, uint16_t* d, int n) {
    for (int i = 0; i < n; ++i) d[i] = attn_detail::f32_to_bf16(s[i]);
  }
  static void f32_to_f16(const float* s, uint16_t* d, int n) {
    for (int i = 0; i < n; ++i) d[i] = attn_detail::f32_to_f16(s[i]);
  }
  static float absmax(const float* x, int n) {
    float m = 0;
    for (int i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
    return m;
  }
  static float quantize_q4(const float* x, uint8_t* q) { return attn_detail::quantize_group_q4(x, q); }
  // A 4-bit row (attention.h) of D values: (code - 8) * its group's scale.
  static void dequant_q4(const uint8_t* q, const float* sc, float* d, int D) {
    for (int g = 0; g < D / kQ4Group; ++g, q += kQ4Group / 2, d += kQ4Group)
      for (int j = 0; j < kQ4Group / 2; ++j) {
        d[j] = float(int(q[j] & 15) - 8) * sc[g];
        d[j + kQ4Group / 2] = float(int(q[j] >> 4) - 8) * sc[g];
      }
  }
  static void quantize_i8(const float* x, float s, int8_t* q, int n) {
    for (int i = 0; i < n; ++i) q[i] = int8_t(std::min(127.0f, std::max(-127.0f, std::nearbyint(x[i] / s))));
  }
};

}  // namespace
}  // namespace mpt::attention_generic

MPT_ATTENTION_ENTRY_POINTS(attention_generic)
