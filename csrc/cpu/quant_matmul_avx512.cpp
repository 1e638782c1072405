// AVX-512 variant of the quantized matmul (16-float vectors); the algorithm is in quant_simd.h.
#include <immintrin.h>

#include "cpu/q8_lanes_avx512.h"
#include "cpu/quant_formats.h"

namespace mpt {
namespace avx512 {

struct V {
  using F = __m512;
  static constexpr int NR = 12;  // register tile: NR weight rows x 2 vectors of x rows
  static constexpr int L = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }

  // Kernel order inside a 32-chunk: NF4 bytes give [k even..., k odd...]; the others are in order.
  static int kpos(QFormat f, int i) { return f == QFormat::Nf4 ? (i < 16 ? 2 * i : 2 * (i - 16) + 1) : i; }

  static void decode_int8(const uint8_t* p, F* out) {
    out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
  }
  static void widen_halves(const uint16_t* h, int64_t n, float* out) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
    if (i < n) {
      const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
      _mm512_mask_storeu_ps(out + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, h + i)));
    }
  }
  static void decode_int4(const uint8_t* p, float d, F* out) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const F vd = _mm512_set1_ps(d), m8d = _mm512_set1_ps(-8.0f * d);  // q*d - 8d rounds once: (q-8)*d
    const __m512 qm8 = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    out[0] = _mm512_mul_ps(_mm512_permutexvar_ps(b, qm8), vd);  // low nibble: vpermps reads bits 0-3
    out[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), vd, m8d);
  }
  static void decode_nf4(const uint8_t* p, float absmax, F* out) {
    const __m512 code = _mm512_loadu_ps(kNf4Code), s = _mm512_set1_ps(absmax);
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    out[0] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), code), s);
    out[1] = _mm512_mul_ps(_mm512_permutexvar_ps(b, code), s);  // vpermps reads only the low 4 bits
  }
};

}  // namespace avx512
}  // namespace mpt

#define QSIMD_NS avx512
#include "cpu/quant_simd.h"

namespace mpt {
namespace avx512 {

// ---- q8 activations x int8 / int4 weights with VNNI (vpdpbusd: u8 x s8, 4 products per int32 lane) ----
// Work goes in steps of 128 k (four 32-blocks). Two vpdpbusd fill each int32 lane with 8 products of
// one block (4 lanes a block), so a step costs per x row two integer dot products, one conversion and
// one multiply-add. The weight side is the unsigned operand:
//   int8: cb ^ 0x80 = cb + 128, so a dot is off by 128 * (sum of the x codes it covers);
//   int4: the raw nibbles 0..15, off by 8 * (sum of the x codes) from the codes q - 8;
//   nf4: kNf4Int8[q] + 128 by a byte shuffle (nf4_step), off by 128 * (sum of the x codes) as int8.
// Each lane starts at minus the offset of its own 8 x codes, so every lane holds the exact partial
// dot product of the codes (never a large offset that cancels only across lanes, in float).
// Byte order of a step, the same for x and weights: half A = [b0 k0-15 | b1 k0-15 | b2 k0-15 | b3 k0-15],
// half B = the same for k16-31. int4's low nibbles of 4 groups (64 bytes) are exactly A, the high ones B;
// int8's two 64-byte loads are regrouped into A and B by 128-bit lane shuffles.
struct Q8Pack {
  int64_t S = 0;              // steps of 128 k
  std::vector<int8_t> q;      // [M, S, 2 halves, 64] x codes
  std::vector<int32_t> init;  // [M, S, 16] start value of each int32 lane
  std::vector<float> dx;      // [M, S, 16] d of the block each lane belongs to
};

static void q8_pack(QFormat f, const Q8Rows& x, Q8Pack& out) {
  const int64_t KB = x.KB, Kp = KB * 32, S = (KB + 3) / 4, M = x.M;
  out.S = S;
  out.q.assign(static_cast<size_t>(M * S * 128), 0);
  out.init.assign(static_cast<size_t>(M * S * 16), 0);
  out.dx.assign(static_cast<size_t>(M * S * 16), 0.f);
  const int32_t off = f == QFormat::Int4 ? 8 : 128;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t st = 0; st < S; ++st) {
      int8_t* q = out.q.data() + (m * S + st) * 128;
      for (int h = 0; h < 2; ++h)
        for (int p = 0; p < 64; ++p) {
          const int64_t k = (st * 4 + p / 16) * 32 + h * 16 + p % 16;
          q[h * 64 + p] = k < Kp ? x.q[m * Kp + k] : 0;
        }
      for (int l = 0; l < 16; ++l) {
        int32_t sum = 0;
        for (int j = 0; j < 4; ++j) sum += q[4 * l + j] + q[64 + 4 * l + j];
        out.init[(m * S + st) * 16 + l] = -off * sum;
        const int64_t b = st * 4 + l / 4;
        if (b < KB) out.dx[(m * S + st) * 16 + l] = x.d[m * KB + b];
      }
    }
}

using avx512_lanes::bytes_mask;

// kNf4Int8 ^ 0x80 (the codes + 128, unsigned) in each 128-bit lane: the byte-shuffle table of nf4.
inline __m512i nf4_u8_table() {
  return _mm512_broadcast_i32x4(
      _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8)), _mm_set1_epi8(static_cast<char>(0x80))));
}

// nf4 (bitsandbytes order) in the int8 byte order of a q8_rows step: 64 bytes hold 128 k, block j
// (32 k) in bytes 16j..16j+15 with even k in the high nibbles. Both nibbles are looked up in
// kNf4Int8 ^ 0x80 (the code + 128, unsigned as int8's cb ^ 0x80) by a byte shuffle, and the even/odd
// codes interleaved per 128-bit lane: unpacklo gives k 0-15 of each block (half A), unpackhi k 16-31
// (half B). Absent bytes look up nibble 0 (kNf4Int8[0] + 128) against x codes 0. The lane scales: lane l belongs to
// nf4 block ((l / 4) * 32) >> shift after the step's first block (blocksize a power of two >= 32).
static inline void nf4_step(const uint8_t* p, int64_t bytes, const float* s, int64_t nblocks, int shift,
                            __m512i& wa, __m512i& wb, __m512& dw) {
  const __m512i lo4 = _mm512_set1_epi8(15);
  const __m512i table = nf4_u8_table();
  const __m512i raw = bytes >= 64 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(bytes_mask(bytes), p);
  const __m512i ev = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4));
  const __m512i od = _mm512_shuffle_epi8(table, _mm512_and_si512(raw, lo4));
  wa = _mm512_unpacklo_epi8(ev, od);
  wb = _mm512_unpackhi_epi8(ev, od);
  const int64_t need = std::max<int64_t>(1, 128 >> shift);
  const __m512i idx = _mm512_srli_epi32(_mm512_setr_epi32(0, 0, 0, 0, 32, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 96),
                                        shift);
  const __mmask16 mask = static_cast<__mmask16>((1u << std::min(need, nblocks)) - 1);
  dw = _mm512_mul_ps(_mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(mask, s)), _mm512_set1_ps(kNf4IntScale));
}

// Software prefetch of q8_rows: every line of a pass, this far ahead of the loads. With the weights out
// of cache (bench_gemv_bandwidth.py, 2 threads), one prefetch per 2 steps 4096 bytes ahead and 2
// accumulators read int4 at 13.7-15.0 GB per CPU-second, every line 2048 ahead and 4 accumulators at
// 16.3-18.4 (nf4 13.9 -> 17.3, int8 18.2 -> 19.8; the native read loop 25-28): more loads in flight.
constexpr int kRowsPrefetchBytes = 2048;

template <QFormat FMT, int MB>
void q8_rows(const QWeight& w, const Q8Pack& xp, int64_t m0, const float* bias, float* y, int64_t n0, int64_t n1) {
  constexpr int U = MB == 1 ? 4 : 1;  // more accumulators hide the FMA latency of a single row
  const int64_t S = xp.S, K = w.K, G = int4_groups(K), N = w.N;
  const __m512i lo4 = _mm512_set1_epi8(15), x80 = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i gidx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const int8_t* xq = xp.q.data() + m0 * S * 128;
  const int32_t* xi = xp.init.data() + m0 * S * 16;
  const float* xd = xp.dx.data() + m0 * S * 16;
  const int nf4_shift = FMT == QFormat::Nf4 ? __builtin_ctzll(w.blocksize) : 0;  // nf4_q8_ok: a power of two
  for (int64_t n = n0; n < n1; ++n) {
    __m512 acc[MB][U];
    for (int m = 0; m < MB; ++m)
      for (int u = 0; u < U; ++u) acc[m][u] = _mm512_setzero_ps();
    const uint8_t* wrow = FMT == QFormat::Int4  ? w.data + n * G * 16
                          : FMT == QFormat::Nf4 ? w.data + n * K / 2
                                                : w.data + n * K;
    const uint16_t* srow = FMT == QFormat::Int4 ? w.scale16 + n * G : nullptr;
    const float* nf4_abs = FMT == QFormat::Nf4 ? w.scale + (n * K >> nf4_shift) : nullptr;
    auto step = [&](int64_t st, int u, bool full) __attribute__((always_inline)) {
      __m512i wa, wb;
      __m512 dw = _mm512_setzero_ps();
      if (FMT == QFormat::Nf4) {
        const int64_t b0 = st * 128 >> nf4_shift;
        nf4_step(wrow + st * 64, full ? 64 : K / 2 - st * 64, nf4_abs + b0, (K >> nf4_shift) - b0, nf4_shift, wa, wb, dw);
      } else if (FMT == QFormat::Int4) {
        const int64_t g = st * 4;
        const __m512i raw = full ? _mm512_loadu_si512(wrow + g * 16)
                                 : _mm512_maskz_loadu_epi8(bytes_mask((G - g) * 16), wrow + g * 16);
        const __m128i h = full ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(srow + g))
                               : _mm_maskz_loadu_epi16(static_cast<__mmask8>((1u << (G - g)) - 1), srow + g);
        const __m128 sc = _mm_cvtph_ps(h);  // 4 half scales
        dw = _mm512_permutexvar_ps(gidx, _mm512_castps128_ps512(sc));
        wa = _mm512_and_si512(raw, lo4);  // absent groups: nibbles 0 against x codes 0
        wb = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);
      } else {
        const int64_t k = st * 128;
        __m512i r0, r1;
        if (full) {
          r0 = _mm512_loadu_si512(wrow + k);
          r1 = _mm512_loadu_si512(wrow + k + 64);
        } else {
          r0 = _mm512_maskz_loadu_epi8(bytes_mask(K - k), wrow + k);
          r1 = _mm512_maskz_loadu_epi8(bytes_mask(K - k - 64), wrow + k + 64);
        }
        wa = _mm512_xor_si512(_mm512_shuffle_i64x2(r0, r1, _MM_SHUFFLE(2, 0, 2, 0)), x80);  // absent: 128 vs 0
        wb = _mm512_xor_si512(_mm512_shuffle_i64x2(r0, r1, _MM_SHUFFLE(3, 1, 3, 1)), x80);
      }
      for (int m = 0; m < MB; ++m) {
        const int8_t* q = xq + (m * S + st) * 128;
        __m512i i = _mm512_dpbusd_epi32(_mm512_loadu_si512(xi + (m * S + st) * 16), wa, _mm512_loadu_si512(q));
        i = _mm512_dpbusd_epi32(i, wb, _mm512_loadu_si512(q + 64));
        const __m512 d = _mm512_loadu_ps(xd + (m * S + st) * 16);
        acc[m][u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), FMT != QFormat::Int8 ? _mm512_mul_ps(dw, d) : d, acc[m][u]);
      }
    };
    const int64_t Sfull = FMT == QFormat::Int4 ? G / 4 : K / 128;  // steps that need no masking
    int64_t st = 0;
    constexpr int SB = FMT == QFormat::Int8 ? 128 : 64;  // weight bytes a step
    for (; st + U <= Sfull; st += U) {
      for (int l = 0; l < U * SB; l += 64)
        _mm_prefetch(reinterpret_cast<const char*>(wrow + st * SB + kRowsPrefetchBytes + l), _MM_HINT_T0);
      for (int u = 0; u < U; ++u) step(st + u, u, true);
    }
    for (; st < S; ++st) step(st, 0, st < Sfull);
    const float rf = row_factor(w, n), b = bias ? bias[n] : 0.f;
    for (int m = 0; m < MB; ++m) {
      __m512 s = acc[m][0];
      for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[m][u]);
      y[(m0 + m) * N + n] = _mm512_reduce_add_ps(s) * rf + b;
    }
  }
}

template <QFormat FMT, int... MB>
void q8_rows_any(std::integer_sequence<int, MB...>, int mb, const QWeight& w, const Q8Pack& xp, int64_t m0,
                 const float* bias, float* y, int64_t n0, int64_t n1) {
  using Fn = void (*)(const QWeight&, const Q8Pack&, int64_t, const float*, float*, int64_t, int64_t);
  static constexpr Fn table[] = {&q8_rows<FMT, MB + 1>...};
  table[mb - 1](w, xp, m0, bias, y, n0, n1);
}

constexpr int kQ8Rows = 3;  // up to this many x rows: q8_rows, streaming x per weight row; more: q8_wide

// ---- int4 / int8 / nf4 at 4+ x rows: 16 blocks a step, one int32 lane per block ----
// q8_rows converts each step's int32 lanes to float per (weight row, x row) after 2 dot products (so did
// the 4x4 register tile used here before: 3 float operations per 2 dot products). Here a step covers 16
// blocks of 32 k and each lane sums all 32 products of one block (8 vpdpbusd), so the float work per
// (weight row, x row) is 2-3 operations per 8 dot products. The weight side is regrouped
// once per weight row and step, by dword transposes inside 128-bit lanes, and serves every x row.
// x vector v (v < 8) of a step holds in lane p the 4 codes of block step_block<FMT>(p)
// (q8_lanes_avx512.h) at k offsets 4v..4v+3 (nf4: of the block's codes ordered [even k, odd k]):
//   int4: 4 loads of 4 groups; 8 unpacks give r_j (j < 4) with lane p = 4b + a holding dword j of
//         group 4a + b; its low nibbles are k 4j.., its high nibbles k 16+4j.. (vectors j and 4 + j).
//   int8: 8 loads of 2 blocks; two such transposes and 8 128-bit shuffles give vectors v = dword v of
//         block 8 (c / 2) + 2 a + c % 2 in lane p = 4c + a.
//   nf4:  as int4 (a 64-byte load is 4 blocks of 16 bytes), but byte i of a block holds k 2i in its high
//         nibble and k 2i + 1 in its low one: vector j (j < 4) is the high nibbles of dword j (k 8j, 8j+2,
//         8j+4, 8j+6), vector 4 + j the low ones (k 8j+1, ...); each nibble is looked up in kNf4Int8 ^ 0x80
//         by a byte shuffle (offset 128, as int8).
// Step-major ([S, M, ...]): the rows of one step lie a constant 512 bytes apart, so the kernel
// addresses every x row of a step from one pointer (with [M, S] the per-row pointers spilled).
struct Q8Wide {
  int64_t S = 0, M = 0;       // steps of 16 blocks, x rows
  std::vector<int8_t> q;      // [S, M, 8 vectors, 64] x codes in lane order
  std::vector<int32_t> init;  // [S, M, 16] -offset * (sum of the block's x codes), as in q8_pack
  std::vector<float> dx;      // [S, M, 16] d of the block of each lane (0 past KB)
};

// Quantizes x (Q8Rows' arithmetic) straight into the wide layout, step-major; nf4's blocks with their
// codes ordered [even k, odd k] (the order its weight nibbles come in).
template <QFormat FMT>
void q8_pack_wide(const float* x, int64_t M, int64_t K, Q8Wide& out) {
  const int64_t KB = (K + 31) / 32, S = (KB + 15) / 16;
  const int32_t off = FMT == QFormat::Int4 ? 8 : 128;
  out.S = S, out.M = M;
  out.q.resize(static_cast<size_t>(M * S * 512));
  out.init.resize(static_cast<size_t>(M * S * 16));
  out.dx.resize(static_cast<size_t>(M * S * 16));
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t st = 0; st < S; ++st) {
        const int64_t o = st * M + m;
        avx512_lanes::pack_x_step<FMT>(x + m * K, K, st, off, FMT == QFormat::Nf4, out.q.data() + o * 512,
                                       out.init.data() + o * 16, out.dx.data() + o * 16);
      }
  });
}

// Q8Rows of x (quantize_q8's codes and scales, vectorised).
inline void quantize_rows(const float* x, int64_t M, int64_t K, Q8Rows& out) {
  const int64_t KB = (K + 31) / 32, Kp = KB * 32;
  out.M = M, out.K = K, out.KB = KB;
  out.q.resize(static_cast<size_t>(M * Kp));
  out.d.resize(static_cast<size_t>(M * KB));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < KB; ++b) {
      int32_t sum;
      out.d[m * KB + b] = avx512_lanes::quantize_block32(x + m * K + b * 32, K - b * 32, out.q.data() + m * Kp + b * 32, sum);
    }
}

constexpr int kWideMB = 16;  // x rows per pass over a weight row

// nf4: the block scales (absmax / kNf4IntMax) of the lanes of wide step st of a row (16 blocks of 32 k in
// step_block order). abs: the row's nf4 blocks (K >> shift of them); a blocksize of 2^shift >= 32.
inline __m512 nf4_wide_scales(const float* abs, int64_t K, int shift, int64_t st) {
  const int64_t b0 = st * 512 >> shift, have = (K >> shift) - b0;
  const __m512i idx = _mm512_srli_epi32(
      _mm512_setr_epi32(0, 128, 256, 384, 32, 160, 288, 416, 64, 192, 320, 448, 96, 224, 352, 480), shift);
  const int64_t need = std::min<int64_t>(std::max<int64_t>(1, 512 >> shift), have);
  const __m512 a = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << need) - 1), abs + b0);
  return _mm512_mul_ps(_mm512_permutexvar_ps(idx, a), _mm512_set1_ps(kNf4IntScale));
}

// One weight row's step st (16 blocks of 32 k) in the lane layout above: 8 vectors of unsigned codes
// and the 16 lane scales (int4: its half group scales; nf4: absmax / 127; int8: unused).
template <QFormat FMT>
struct WideRow {
  static constexpr bool I4 = FMT == QFormat::Int4, NF = FMT == QFormat::Nf4;
  static constexpr int NL = I4 || NF ? 4 : 8;  // 64-byte loads a step
  const QWeight& w;
  int64_t K, G, rowbytes, Sfull;
  int nf4_shift;
  explicit WideRow(const QWeight& qw)
      : w(qw), K(qw.K), G(int4_groups(qw.K)), rowbytes(I4 ? G * 16 : NF ? qw.K / 2 : qw.K),
        Sfull(I4 ? G / 16 : qw.K / 512), nf4_shift(NF ? __builtin_ctzll(qw.blocksize) : 0) {}

  __attribute__((always_inline)) inline void step(int64_t n, int64_t st, __m512i* wv, __m512& dw) const {
    const __m512i lo4 = _mm512_set1_epi8(15), x80 = _mm512_set1_epi8(static_cast<char>(0x80));
    const __m512i sidx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const uint8_t* p = w.data + n * rowbytes + st * 64 * NL;
    const uint16_t* srow = I4 ? w.scale16 + n * G : nullptr;
    __m512i z[NL];
    dw = _mm512_setzero_ps();
    if (st < Sfull) {
      for (int a = 0; a < NL; ++a) z[a] = _mm512_loadu_si512(p + 64 * a);
      if (I4)
        dw = _mm512_permutexvar_ps(
            sidx, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(srow + st * 16))));
      for (int a = 0; a < NL; a += 2)
        _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64 * a), _MM_HINT_T0);
    } else {  // the last, partial step: absent bytes load as 0 (int4: scale 0 too), against x codes 0
      const int64_t left = rowbytes - st * 64 * NL;
      for (int a = 0; a < NL; ++a) z[a] = _mm512_maskz_loadu_epi8(bytes_mask(left - 64 * a), p + 64 * a);
      if (I4)
        dw = _mm512_permutexvar_ps(
            sidx, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << (G - st * 16)) - 1),
                                                           srow + st * 16)));
    }
    if (NF) dw = nf4_wide_scales(w.scale + (n * K >> nf4_shift), K, nf4_shift, st);  // absent lanes: x's d is 0
    if (NF) {  // absent bytes: code 0 looks up 1, against x codes 0
      const __m512i table = nf4_u8_table();
      __m512i r[4];
      avx512_lanes::transpose4(z, r);
      for (int j = 0; j < 4; ++j) {
        wv[j] = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(r[j], 4), lo4));
        wv[4 + j] = _mm512_shuffle_epi8(table, _mm512_and_si512(r[j], lo4));
      }
    } else if (I4) {
      __m512i r[4];
      avx512_lanes::transpose4(z, r);
      for (int j = 0; j < 4; ++j) {
        wv[j] = _mm512_and_si512(r[j], lo4);
        wv[4 + j] = _mm512_and_si512(_mm512_srli_epi16(r[j], 4), lo4);
      }
    } else {
      __m512i r0[4], r1[4];
      avx512_lanes::transpose4(z, r0);
      avx512_lanes::transpose4(z + 4, r1);
      for (int j = 0; j < 4; ++j) {  // absent bytes: 0 ^ 0x80 = 128 against x codes 0
        wv[j] = _mm512_xor_si512(_mm512_shuffle_i64x2(r0[j], r1[j], _MM_SHUFFLE(2, 0, 2, 0)), x80);
        wv[4 + j] = _mm512_xor_si512(_mm512_shuffle_i64x2(r0[j], r1[j], _MM_SHUFFLE(3, 1, 3, 1)), x80);
      }
    }
  }
};

// The dot products of one step: C x rows (from c) against NR weight rows whose step vectors are wv.
// vpdpbusd has a latency of several cycles and the core retires two a cycle, so it needs ~10
// independent sums in flight: the loops run v outermost over NR x C int32 chains (one per
// (weight row, x row); each x vector serves every weight row). Integer sums are exact, and the float
// update per step is the GEMM tiles' own, so every row stays bit-identical to them.
template <QFormat FMT, int NR, int C, int C0, int MB>
__attribute__((always_inline)) inline void wide_step_dots(const __m512i (&wv)[NR][8], const __m512 (&dw)[NR],
                                                          const int8_t* q, const int32_t* xi, const float* xd,
                                                          __m512 (&acc)[NR][MB]) {
  __m512i s[NR][C];
#pragma GCC unroll 16
  for (int m = 0; m < C; ++m) {
    const __m512i init = _mm512_loadu_si512(xi + m * 16);
#pragma GCC unroll 2
    for (int r = 0; r < NR; ++r) s[r][m] = init;
  }
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) {
#pragma GCC unroll 16
    for (int m = 0; m < C; ++m) {
      const __m512i x = _mm512_loadu_si512(q + m * 512 + 64 * v);
#pragma GCC unroll 2
      for (int r = 0; r < NR; ++r) s[r][m] = _mm512_dpbusd_epi32(s[r][m], wv[r][v], x);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < C; ++m) {
    const __m512 d = _mm512_loadu_ps(xd + m * 16);
#pragma GCC unroll 2
    for (int r = 0; r < NR; ++r)
      acc[r][C0 + m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r][m]), FMT != QFormat::Int8 ? _mm512_mul_ps(dw[r], d) : d,
                                       acc[r][C0 + m]);
  }
}

// x rows whose int32 chains run together (2 weight rows x 4: 8 chains and 16 weight vectors in
// registers; chunks of 8 measured the same at 8 rows and 1.45x slower at 16, spilling)
constexpr int kWideChunk = 4;

// x rows [C0, MB) of a step in chunks of kWideChunk.
template <QFormat FMT, int NR, int MB, int C0>
__attribute__((always_inline)) inline void wide_chunks(const __m512i (&wv)[NR][8], const __m512 (&dw)[NR],
                                                       const int8_t* q, const int32_t* xi, const float* xd,
                                                       __m512 (&acc)[NR][MB]) {
  constexpr int C = MB - C0 < kWideChunk ? MB - C0 : kWideChunk;
  wide_step_dots<FMT, NR, C, C0>(wv, dw, q + C0 * 512, xi + C0 * 16, xd + C0 * 16, acc);
  if constexpr (C0 + C < MB) wide_chunks<FMT, NR, MB, C0 + C>(wv, dw, q, xi, xd, acc);
}

// NR weight rows (n, n + 1, ...) against MB x rows from m0.
template <QFormat FMT, int MB, int NR>
inline void q8_wide_pass(const WideRow<FMT>& wr, const Q8Wide& xp, int64_t m0, const float* bias, float* y,
                         int64_t n) {
  const int64_t S = xp.S, N = wr.w.N, XM = xp.M;
  const int8_t* xq = xp.q.data() + m0 * 512;
  const int32_t* xi = xp.init.data() + m0 * 16;
  const float* xd = xp.dx.data() + m0 * 16;
  __m512 acc[NR][MB];
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t st = 0; st < S; ++st) {
    __m512i wv[NR][8];
    __m512 dw[NR];
    for (int r = 0; r < NR; ++r) wr.step(n + r, st, wv[r], dw[r]);
    const int64_t o = st * XM;
    wide_chunks<FMT, NR, MB, 0>(wv, dw, xq + o * 512, xi + o * 16, xd + o * 16, acc);
  }
  for (int r = 0; r < NR; ++r) {
    const float rf = row_factor(wr.w, n + r), b = bias ? bias[n + r] : 0.f;
    for (int m = 0; m < MB; ++m) y[(m0 + m) * N + n + r] = _mm512_reduce_add_ps(acc[r][m]) * rf + b;
  }
}

template <QFormat FMT, int MB>
void q8_wide_rows(const QWeight& w, const Q8Wide& xp, int64_t m0, const float* bias, float* y, int64_t n0,
                  int64_t n1) {
  const WideRow<FMT> wr(w);
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) q8_wide_pass<FMT, MB, 2>(wr, xp, m0, bias, y, n);
  if (n < n1) q8_wide_pass<FMT, MB, 1>(wr, xp, m0, bias, y, n);
}

template <QFormat FMT, int... MB>
void q8_wide_any(std::integer_sequence<int, MB...>, int mb, const QWeight& w, const Q8Wide& xp, int64_t m0,
                 const float* bias, float* y, int64_t n0, int64_t n1) {
  using Fn = void (*)(const QWeight&, const Q8Wide&, int64_t, const float*, float*, int64_t, int64_t);
  static constexpr Fn table[] = {&q8_wide_rows<FMT, MB + 1>...};
  table[mb - 1](w, xp, m0, bias, y, n0, n1);
}

template <QFormat FMT>
void q8_wide(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  thread_local Q8Wide xp;  // kept between calls: no page faults for a fresh buffer every matmul
  q8_pack_wide<FMT>(x, M, w.K, xp);
  struct Rows {
    const QWeight& w;
    const Q8Wide& xp;
    int64_t M;
    const float* bias;
    float* y;
    auto make_worker() { return [this](int64_t t0, int64_t t1) { tile(t0, t1); }; }
    void tile(int64_t t0, int64_t t1) const {
      for (int64_t m0 = 0; m0 < M; m0 += kWideMB)
        q8_wide_any<FMT>(std::make_integer_sequence<int, kWideMB>{},
                         static_cast<int>(std::min<int64_t>(kWideMB, M - m0)), w, xp, m0, bias, y, t0, t1);
    }
  };
  for_row_chunks(w.N, decode_chunk(w.N), Rows{w, xp, M, bias, y});
}

template <QFormat FMT>
void q8_run(const QWeight& w, const float* xf, int64_t M, const float* bias, float* y) {
  if (M > kQ8Rows) return q8_wide<FMT>(w, xf, M, bias, y);
  thread_local Q8Rows x;
  thread_local Q8Pack xp;
  quantize_rows(xf, M, w.K, x);
  q8_pack(FMT, x, xp);
  struct Rows {
    const QWeight& w;
    const Q8Pack& xp;
    int64_t M;
    const float* bias;
    float* y;
    auto make_worker() { return [this](int64_t t0, int64_t t1) { tile(t0, t1); }; }
    void tile(int64_t t0, int64_t t1) const {
      for (int64_t m0 = 0; m0 < M; m0 += kQ8Rows)
        q8_rows_any<FMT>(std::make_integer_sequence<int, kQ8Rows>{}, static_cast<int>(std::min<int64_t>(kQ8Rows, M - m0)),
                         w, xp, m0, bias, y, t0, t1);
    }
  };
  for_row_chunks(w.N, decode_chunk(w.N), Rows{w, xp, x.M, bias, y});
}

}  // namespace avx512

void qmatmul_avx512(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  avx512::qmatmul_simd(w, x, M, bias, y);
}

void qmatmul_q8_avx512(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  if (w.fmt == QFormat::Int8) return avx512::q8_run<QFormat::Int8>(w, x, M, bias, y);
  if (w.fmt == QFormat::Nf4) return avx512::q8_run<QFormat::Nf4>(w, x, M, bias, y);
  avx512::q8_run<QFormat::Int4>(w, x, M, bias, y);
}
}  // namespace mpt
