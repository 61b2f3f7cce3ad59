// Vectorizable float32 kernels for the normalizer's hot loops: log1p over a row (a polynomial
// after an exact range reduction, branch-free so the compiler emits SIMD code) and float32 ->
// float16 rows (F16C when the CPU has it, the bit-exact software conversion otherwise; both
// round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>

#include "half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BULKFORMER_X86 1
#endif

// A function compiled for AVX2+FMA and for the baseline ISA (GCC function multiversioning: the
// loader's ifunc picks the clone the CPU supports). Off under ThreadSanitizer (`make tsan`),
// whose instrumented ifunc resolvers would run before its runtime is up.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_THREAD__)
#define BF_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define BF_TARGET_CLONES
#endif

namespace bulkformer {

// log1p(x) for x >= 0 (finite), max error 1.45 ulp (1.34 with FMA contraction) against the
// float64 log1p over 21 M random arguments from 1e-12 to 3e7 (the old Cephes-logf-plus-Goldberg
// form: 2.42 ulp). Branch- and division-free, so the compiler emits SIMD code:
//   1 + x = 2^K (1 + f) with 1 + f in [0.75, 1.5), K chosen from the bits of 1 + x;
//   f = x 2^-K + (2^-K - 1), both terms exact (K = 0: f = x itself, so tiny x lose nothing);
//   log1p(x) = K ln2 + f - f^2/2 + f^3 Q(f), Q of degree 6 fitted here for relative error
//   2^-24.6 on [-0.25, 0.5] (weighted least squares iterated towards minimax), in Estrin form.
static inline uint32_t f32_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
static inline float bits_f32(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}
static inline float log1p_pos(float x) {
  const uint32_t ku = (f32_bits(x + 1.0f) - 0x3f400000u) & 0xff800000u;  // K in the exponent
  const float s = bits_f32(0x40800000u - ku);                             // 4 * 2^-K
  const float f = bits_f32(f32_bits(x) - ku) + (0.25f * s - 1.0f);
  const float k = static_cast<float>(static_cast<int32_t>(ku) >> 23);
  const float f2 = f * f, f4 = f2 * f2;
  const float p01 = 0x1.5555b2p-2f - 0x1.ffececp-3f * f;
  const float p23 = 0x1.993ce8p-3f - 0x1.57d5c8p-3f * f;
  const float p45 = 0x1.313e2ep-3f - 0x1.f0316ep-4f * f;
  const float q = (p01 + p23 * f2) + (p45 + 0x1.c772b0p-5f * f2) * f4;
  return k * 0x1.62e430p-1f + (f + f2 * (q * f - 0.5f));
}

// dst[c] = covered[c] ? log1p(v[c] * scale) : 0, for a whole row (dst does not overlap v).
// Compiled for AVX2+FMA and for the baseline ISA; the loader picks the clone the CPU supports.
BF_TARGET_CLONES
inline void log1p_row(const float* __restrict v, const uint8_t* __restrict covered, int64_t n,
                      float scale, float* __restrict dst) {
  for (int64_t c = 0; c < n; ++c) {
    const float t = log1p_pos(v[c] * scale);
    dst[c] = covered[c] ? t : 0.0f;
  }
}

// out[i] = float(c[i]) * inv[i] (the conversion of a uint32 rounds once, on every ISA).
BF_TARGET_CLONES
inline void scale_u32_row(const uint32_t* c, const float* inv, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(c[i]) * inv[i];
}

#ifdef BULKFORMER_X86
__attribute__((target("avx,f16c"))) inline void f32_to_f16_row_f16c(const float* v, uint16_t* o,
                                                                    int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    __m256 x = _mm256_loadu_ps(v + c);
    __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c), h);
  }
  for (; c < n; ++c) o[c] = float_to_half(v[c]);
}

inline bool have_f16c() {
  static const bool ok = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return ok;
}
#endif

inline void f32_to_f16_row(const float* v, uint16_t* o, int64_t n) {
#ifdef BULKFORMER_X86
  if (have_f16c()) {
    f32_to_f16_row_f16c(v, o, n);
    return;
  }
#endif
  for (int64_t c = 0; c < n; ++c) o[c] = float_to_half(v[c]);
}

}  // namespace bulkformer
