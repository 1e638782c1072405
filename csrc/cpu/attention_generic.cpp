// Portable attention kernels (plain C++; the compiler may still auto-vectorise for the base ISA).
#include "cpu/attention_kernel.h"

namespace mpt::attention_generic {
namespace {

struct Ops {
  static float dot(const float* a, const float* b, int n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
      s0 += a[i] * b[i];
      s1 += a[i + 1] * b[i + 1];
      s2 += a[i + 2] * b[i + 2];
      s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; ++i) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
  }
  static void axpy(float a, const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] += a * x[i];
  }
  static void scale(float* y, float a, int n) {
    for (int i = 0; i < n; ++i) y[i] *= a;
  }
  static void bf16_to_f32(const uint16_t* s, float* d, int n) {
    for (int i = 0; i < n; ++i) d[i] = attn_detail::bf16_to_f32(s[i]);
  }
  static void f16_to_f32(const uint16_t* s, float* d, int n) {
    for (int i = 0; i < n; ++i) d[i] = attn_detail::f16_to_f32(s[i]);
  }
  static void i8_to_f32(const int8_t* s, float scale, float* d, int n) {
    for (int i = 0; i < n; ++i) d[i] = float(s[i]) * scale;
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
  static void quantize_i8(const float* x, float s, int8_t* q, int n) {
    for (int i = 0; i < n; ++i) q[i] = int8_t(std::min(127.0f, std::max(-127.0f, std::nearbyint(x[i] / s))));
  }
};

}  // namespace
}  // namespace mpt::attention_generic

MPT_ATTENTION_ENTRY_POINTS(attention_generic)
