// Vectorizable float32 kernels for the normalizer's hot loops: log1p over a row (Cephes logf
// polynomial, branch-free so the compiler emits SIMD code) and float32 -> float16 rows (F16C
// when the CPU has it, the bit-exact software conversion otherwise; both round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>

#include "half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BULKFORMER_X86 1
#endif

namespace bulkformer {

// log(u) for u >= 1 (finite), relative error ~1e-7 (Cephes logf).
static inline float log_ge1(float u) {
  uint32_t bits;
  std::memcpy(&bits, &u, 4);
  int e = static_cast<int>((bits >> 23) & 0xff) - 126;
  bits = (bits & 0x807fffffu) | 0x3f000000u;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &bits, 4);
  const bool small = m < 0.707106781186547524f;
  e -= small ? 1 : 0;
  float x = small ? (m + m - 1.0f) : (m - 1.0f);
  const float z = x * x;
  float y = 7.0376836292E-2f;
  y = y * x - 1.1514610310E-1f;
  y = y * x + 1.1676998740E-1f;
  y = y * x - 1.2420140846E-1f;
  y = y * x + 1.4249322787E-1f;
  y = y * x - 1.6668057665E-1f;
  y = y * x + 2.0000714765E-1f;
  y = y * x - 2.4999993993E-1f;
  y = y * x + 3.3333331174E-1f;
  y = y * x * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  x = x + y;
  x += 0.693359375f * fe;
  return x;
}

// log1p(x) for x >= 0 with Goldberg's correction: log(1+x) * x / ((1+x) - 1).
static inline float log1p_pos(float x) {
  const float u = 1.0f + x;
  const float d = u - 1.0f;
  const bool exact = d == 0.0f;
  const float ratio = x / (exact ? 1.0f : d);  // never divides by zero: selects, no branches
  const float l = log_ge1(u);
  return exact ? x : l * ratio;
}

// dst[c] = covered[c] ? log1p(v[c] * scale) : 0, for a whole row (dst does not overlap v).
// Compiled for AVX2+FMA and for the baseline ISA; the loader picks the clone the CPU supports.
#if defined(BULKFORMER_X86) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
inline void log1p_row(const float* __restrict v, const uint8_t* __restrict covered, int64_t n,
                      float scale, float* __restrict dst) {
  for (int64_t c = 0; c < n; ++c) {
    const float t = log1p_pos(v[c] * scale);
    dst[c] = covered[c] ? t : 0.0f;
  }
}

// out[i] = float(c[i]) * inv[i] (the conversion of a uint32 rounds once, on every ISA).
#if defined(BULKFORMER_X86) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
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
