#include "normalize.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <stdexcept>

#include "fastmath.h"
#include "half.h"
#include "switches.h"
#include "threadpool.h"

namespace bulkformer {

NormPlan::NormPlan(const NormSpec& s) : spec(s) {
  inv_len_f.assign(s.n_src, 0.0f);
  covered.assign(s.n_out, 0);
  const bool given_tpm = s.mode == Mode::kTPM;  // TPM as given: every gene has "length" 1
  for (int64_t j = 0; j < s.n_src; ++j) {
    const double L = (s.lengths && !given_tpm) ? s.lengths[j] : 1.0;
    const bool ok = std::isfinite(L) && L > 0;
    inv_len_f[j] = ok ? static_cast<float>(1.0 / L) : 0.0f;
    const int64_t col = s.gene_map[j];
    if (col >= s.n_out) throw std::invalid_argument("gene_map value out of range");
    if (col >= 0 && ok) {
      mapped_gene.push_back(j);
      mapped_col.push_back(static_cast<int32_t>(col));
    }
    if (col >= 0 && (ok || s.mode == Mode::kCounts)) covered[col] = 1;
  }
  {
    std::vector<uint8_t> hits(s.n_out, 0);
    injective = true;
    identity = static_cast<int64_t>(mapped_col.size()) == s.n_out;
    for (size_t m = 0; m < mapped_col.size(); ++m) {
      injective = injective && !hits[mapped_col[m]];
      hits[mapped_col[m]] = 1;
      identity = identity && mapped_col[m] == static_cast<int32_t>(m);
    }
  }
}

bool NormPlan::needs_values() const {
  // counts accumulate straight into the output row; QC-only calls need no values at all
  return spec.out_type != OutType::kNone && spec.mode != Mode::kCounts;
}

void begin_sample(const NormPlan& plan, SampleAcc& acc, int64_t row, float* vals) {
  const NormSpec& s = plan.spec;
  acc.denom4[0] = acc.denom4[1] = acc.denom4[2] = acc.denom4[3] = 0.0;
  acc.nonzero = 0;
  acc.total = 0.0;
  acc.vals = vals;
  acc.counts = nullptr;
  if (vals) {
    // every mapped gene is assigned by accumulate (callers zero the genes of pieces they skip,
    // see zero_piece), so no memset of the whole row here
  } else if (s.mode == Mode::kCounts && s.out_type == OutType::kF32) {
    acc.counts = static_cast<float*>(s.out) + row * s.out_row_stride;
  } else if (s.mode == Mode::kCounts && s.out_type == OutType::kU32) {
    acc.counts = reinterpret_cast<float*>(static_cast<uint32_t*>(s.out) + row * s.out_row_stride);
  }
  if (acc.counts) std::memset(acc.counts, 0, sizeof(float) * s.n_out);
}

// Pass 1 of accumulate over n (a multiple of 4) contiguous genes starting at a gene index
// that is a multiple of 4: lane j of d4 takes genes g with g % 4 == j. Written lane-wise so the
// compiler keeps the four lanes in one SIMD register (no reassociation: results are identical
// to the scalar order), cloned for AVX2 where the CPU has it.
#ifdef BULKFORMER_X86
// AVX2 loops run when the CPU has AVX2 and switches::simd is on (set_simd(false) forces the
// portable loops: tests compare the two bit for bit).
static bool use_avx2() {
  static const bool cpu = __builtin_cpu_supports("avx2");
  return cpu && switches::simd.load(std::memory_order_relaxed);
}

// The float of each uint32 count, rounded once as a direct conversion rounds (AVX2 converts
// only signed int32): hi·65536 (exact) + lo. Shared by every AVX2 loop, so all paths agree.
__attribute__((target("avx2"))) static inline __m256 u32_to_ps(__m256i c) {
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 16));
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(c, _mm256_set1_epi32(0xffff)));
  return _mm256_add_ps(_mm256_mul_ps(hi, _mm256_set1_ps(65536.0f)), lo);
}

// AVX2 pass 1 for uint32 counts, bit-identical to the scalar lanes: the float of a count is
// formed exactly (hi·65536 + lo, one rounding, as a direct conversion rounds), each product
// rounds to float as in the scalar code, and lane j receives genes j, j+4, j+8, … in order.
__attribute__((target("avx2"))) static void pass1_u32_avx2(const uint32_t* p, const float* inv,
                                                           int64_t n, double* d4,
                                                           int64_t* nnz_out, double* total_out) {
  __m256d acc = _mm256_loadu_pd(d4);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi32(-1);
  __m256i nz = zero, tot = zero;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    const __m256 f = u32_to_ps(c);
    const __m256 r = _mm256_mul_ps(f, _mm256_loadu_ps(inv + i));
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(r)));
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
    nz = _mm256_sub_epi32(nz, _mm256_xor_si256(_mm256_cmpeq_epi32(c, zero), ones));
    tot = _mm256_add_epi64(tot, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(c)));
    tot = _mm256_add_epi64(tot, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(c, 1)));
  }
  alignas(32) double d[4];
  _mm256_store_pd(d, acc);
  alignas(32) int32_t z[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(z), nz);
  alignas(32) uint64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), tot);
  int64_t nnz = 0;
  for (int j = 0; j < 8; ++j) nnz += z[j];
  uint64_t total = t[0] + t[1] + t[2] + t[3];
  for (; i < n; i += 4) {  // n is a multiple of 4: at most one group left
    for (int j = 0; j < 4; ++j) {
      const uint32_t c = p[i + j];
      nnz += (c != 0);
      total += c;
      d[j] += static_cast<double>(static_cast<float>(c) * inv[i + j]);
    }
  }
  for (int j = 0; j < 4; ++j) d4[j] = d[j];
  *nnz_out += nnz;
  *total_out += static_cast<double>(total);
}
#endif

template <typename T>
BF_TARGET_CLONES
static void pass1_lanes_generic(const T* __restrict p, const float* __restrict inv, int64_t n,
                                double* d4, int64_t* nnz_out, double* total_out) {
  double d[4] = {d4[0], d4[1], d4[2], d4[3]};
  double t[4] = {0, 0, 0, 0};
  int64_t z[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < n; i += 4) {
    for (int j = 0; j < 4; ++j) {
      const T c = p[i + j];
      z[j] += (c != 0);
      t[j] += static_cast<double>(c);
      d[j] += static_cast<double>(static_cast<float>(c) * inv[i + j]);
    }
  }
  for (int j = 0; j < 4; ++j) d4[j] = d[j];
  *nnz_out += (z[0] + z[1]) + (z[2] + z[3]);
  *total_out += (t[0] + t[1]) + (t[2] + t[3]);
}

template <typename T>
static void pass1_lanes(const T* p, const float* inv, int64_t n, double* d4, int64_t* nnz_out,
                        double* total_out) {
#ifdef BULKFORMER_X86
  if constexpr (std::is_same<T, uint32_t>::value) {
    if (use_avx2()) return pass1_u32_avx2(p, inv, n, d4, nnz_out, total_out);
  }
#endif
  pass1_lanes_generic(p, inv, n, d4, nnz_out, total_out);
}

void zero_piece(const NormPlan& plan, SampleAcc& acc, int64_t g0, int64_t g1) {
  if (!acc.vals) return;
  const int64_t* mg = plan.mapped_gene.data();
  const int64_t* lo = std::lower_bound(mg, mg + plan.mapped_gene.size(), g0);
  const int64_t* hi = std::lower_bound(lo, mg + plan.mapped_gene.size(), g1);
  std::memset(acc.vals + (lo - mg), 0, sizeof(float) * (hi - lo));
}

template <typename T>
void accumulate(const NormPlan& plan, SampleAcc& acc, int64_t g0, int64_t g1, const T* src,
                int64_t stride) {
  const NormSpec& s = plan.spec;
  const int64_t* map = s.gene_map;
  const bool values = s.out_type != OutType::kNone;
  int64_t nnz = 0;
  double total = 0.0;
  if (!values) {  // QC only
    for (int64_t g = g0; g < g1; ++g, src += stride) {
      const T c = *src;
      nnz += (c != 0);
      total += static_cast<double>(c);
    }
  } else if (s.mode == Mode::kCounts) {
    for (int64_t g = g0; g < g1; ++g, src += stride) {
      const T c = *src;
      if (c == 0) continue;
      ++nnz;
      total += static_cast<double>(c);
      const int64_t col = map[g];
      if (col < 0) continue;
      if (s.out_type == OutType::kU32)
        reinterpret_cast<uint32_t*>(acc.counts)[col] += static_cast<uint32_t>(c);
      else
        acc.counts[col] += static_cast<float>(c);
    }
  } else {
    // Pass 1 over all genes: QC and the TPM denominator. The denominator is summed in four
    // lanes chosen by absolute gene index (g % 4), so it does not depend on how the gene range
    // is split into pieces (chunk rows here, one piece in normalize_dense): both paths give
    // bit-identical results. Four independent chains also keep the adds pipelined.
    const float* inv = plan.inv_len_f.data();
    double* d4 = acc.denom4;
    const T* p = src;
    int64_t g = g0;
    for (; g < g1 && (g & 3); ++g, p += stride) {
      const T c = *p;
      nnz += (c != 0);
      total += static_cast<double>(c);
      d4[g & 3] += static_cast<double>(static_cast<float>(c) * inv[g]);
    }
    if (stride == 1) {
      const int64_t n4 = (g1 - g) & ~int64_t{3};
      pass1_lanes(p, inv + g, n4, d4, &nnz, &total);
      g += n4;
      p += n4;
    } else {
      double a0 = d4[0], a1 = d4[1], a2 = d4[2], a3 = d4[3];
      for (; g + 4 <= g1; g += 4, p += 4 * stride) {
        const T c0 = p[0], c1 = p[stride], c2 = p[2 * stride], c3 = p[3 * stride];
        nnz += (c0 != 0) + (c1 != 0) + (c2 != 0) + (c3 != 0);
        total += (static_cast<double>(c0) + static_cast<double>(c1)) +
                 (static_cast<double>(c2) + static_cast<double>(c3));
        a0 += static_cast<double>(static_cast<float>(c0) * inv[g]);
        a1 += static_cast<double>(static_cast<float>(c1) * inv[g + 1]);
        a2 += static_cast<double>(static_cast<float>(c2) * inv[g + 2]);
        a3 += static_cast<double>(static_cast<float>(c3) * inv[g + 3]);
      }
      d4[0] = a0, d4[1] = a1, d4[2] = a2, d4[3] = a3;
    }
    for (; g < g1; ++g, p += stride) {
      const T c = *p;
      nnz += (c != 0);
      total += static_cast<double>(c);
      d4[g & 3] += static_cast<double>(static_cast<float>(c) * inv[g]);
    }
    // Pass 2 over the genes that have an output column only: C/L stored in mapped order
    // (a contiguous stretch of acc.vals per piece).
    const int64_t* mg = plan.mapped_gene.data();
    const int64_t* lo = std::lower_bound(mg, mg + plan.mapped_gene.size(), g0);
    const int64_t* hi = std::lower_bound(lo, mg + plan.mapped_gene.size(), g1);
    float* vals = acc.vals + (lo - mg);
    if constexpr (std::is_same<T, uint32_t>::value) {
      if (stride == 1 && hi - lo == g1 - g0) {  // every gene of the piece is mapped
        scale_u32_row(src, inv + g0, vals, g1 - g0);
        lo = hi;
      }
    }
    for (const int64_t* it = lo; it < hi; ++it, ++vals) {
      const int64_t gg = *it;
      *vals = static_cast<float>(src[(gg - g0) * stride]) * inv[gg];
    }
  }
  acc.nonzero += nnz;
  acc.total += total;
}

void GroupAcc::reset(int64_t k) {
  K = k;
  d.assign(static_cast<size_t>(4 * k), 0.0);
  nnz.assign(static_cast<size_t>(k), 0);
  tot.assign(static_cast<size_t>(k), 0);
}

// One gene row across the group: nnz/tot always, the denominator lane `dl` when values are on.
template <bool kValues>
BF_TARGET_CLONES
static void gene_row_generic(const uint32_t* __restrict R, int64_t K, float f,
                             double* __restrict dl, int32_t* __restrict nnz,
                             uint64_t* __restrict tot) {
  for (int64_t k = 0; k < K; ++k) {
    const uint32_t c = R[k];
    nnz[k] += (c != 0);
    tot[k] += c;
    if (kValues) dl[k] += static_cast<double>(static_cast<float>(c) * f);
  }
}

#ifdef BULKFORMER_X86
// AVX2 version, 8 samples per step; the float of a count is formed exactly as in
// pass1_u32_avx2 (one rounding, as a direct conversion).
template <bool kValues>
__attribute__((target("avx2"))) static void gene_row_avx2(const uint32_t* R, int64_t K, float f,
                                                         double* dl, int32_t* nnz,
                                                         uint64_t* tot) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi32(-1);
  const __m256 fv = _mm256_set1_ps(f);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(R + k));
    __m256i nz = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nnz + k));
    nz = _mm256_sub_epi32(nz, _mm256_xor_si256(_mm256_cmpeq_epi32(c, zero), ones));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(nnz + k), nz);
    __m256i t0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tot + k));
    __m256i t1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tot + k + 4));
    t0 = _mm256_add_epi64(t0, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(c)));
    t1 = _mm256_add_epi64(t1, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(c, 1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tot + k), t0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tot + k + 4), t1);
    if (kValues) {
      const __m256 r = _mm256_mul_ps(u32_to_ps(c), fv);
      const __m256d d0 = _mm256_add_pd(_mm256_loadu_pd(dl + k),
                                       _mm256_cvtps_pd(_mm256_castps256_ps128(r)));
      const __m256d d1 = _mm256_add_pd(_mm256_loadu_pd(dl + k + 4),
                                       _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
      _mm256_storeu_pd(dl + k, d0);
      _mm256_storeu_pd(dl + k + 4, d1);
    }
  }
  if (k < K)
    gene_row_generic<kValues>(R + k, K - k, f, kValues ? dl + k : nullptr, nnz + k, tot + k);
}
#endif

#ifdef BULKFORMER_X86
// 8 × 8 transpose in registers: r[j][k] (gene j, sample k) -> t[k][j].
__attribute__((target("avx2"))) static inline void transpose8(const __m256* r, __m256* t) {
  const __m256 a0 = _mm256_unpacklo_ps(r[0], r[1]), a1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 a2 = _mm256_unpacklo_ps(r[2], r[3]), a3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 a4 = _mm256_unpacklo_ps(r[4], r[5]), a5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 a6 = _mm256_unpacklo_ps(r[6], r[7]), a7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
  const __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
  const __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
  const __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
  t[0] = _mm256_permute2f128_ps(b0, b4, 0x20), t[1] = _mm256_permute2f128_ps(b1, b5, 0x20);
  t[2] = _mm256_permute2f128_ps(b2, b6, 0x20), t[3] = _mm256_permute2f128_ps(b3, b7, 0x20);
  t[4] = _mm256_permute2f128_ps(b0, b4, 0x31), t[5] = _mm256_permute2f128_ps(b1, b5, 0x31);
  t[6] = _mm256_permute2f128_ps(b2, b6, 0x31), t[7] = _mm256_permute2f128_ps(b3, b7, 0x31);
}
#endif

#ifdef BULKFORMER_X86
// 8 samples' C/L of 8 mapped genes lo[0..8), transposed: t[k] holds sample k0 + k's 8 values.
__attribute__((target("avx2"))) static inline void vals_block8(const uint32_t* rows,
                                                               int64_t row_stride, int64_t g0,
                                                               const int64_t* lo,
                                                               const float* inv, int64_t k0,
                                                               __m256* t) {
  __m256 r[8];
  for (int j = 0; j < 8; ++j) {
    const int64_t gg = lo[j];
    const __m256i c = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(rows + (gg - g0) * row_stride + k0));
    r[j] = _mm256_mul_ps(u32_to_ps(c), _mm256_set1_ps(inv[gg]));
  }
  transpose8(r, t);
}

// C/L of mapped genes lo[0..nm) into the value rows of samples 0..K/8*8 (8 × 8 blocks: 8
// samples' counts of 8 genes, converted exactly as pass1_u32_avx2 does, multiplied by 1/L,
// transposed in registers, stored as 8 contiguous floats per sample). Returns the samples
// done; genes beyond the last full 8 of each block are written scalar.
//
// The value rows of a wide chunk column (hundreds of MB) are not read again before
// finish_sample, long after they left the caches: when every sample's row piece starts on a
// 64-byte boundary (vals rows padded and aligned by the caller), whole lines (16 genes, two
// blocks) are written with non-temporal stores, which skips reading each line from memory
// before overwriting it.
__attribute__((target("avx2"))) static int64_t scatter_vals_avx2(
    const uint32_t* rows, int64_t row_stride, int64_t g0, const int64_t* lo, int64_t nm,
    const float* inv, int64_t K, float* v0, int64_t vs) {
  const int64_t k8 = K & ~int64_t{7}, n8 = nm & ~int64_t{7};
  const bool stream = vs % 16 == 0 && reinterpret_cast<uintptr_t>(v0) % 64 == 0;
  const int64_t n16 = stream ? nm & ~int64_t{15} : 0;  // genes written by streaming stores
  for (int64_t k0 = 0; k0 < k8; k0 += 8) {
    int64_t i0 = 0;
    for (; i0 < n16; i0 += 16) {
      __m256 t[8], u[8];
      vals_block8(rows, row_stride, g0, lo + i0, inv, k0, t);
      vals_block8(rows, row_stride, g0, lo + i0 + 8, inv, k0, u);
      for (int k = 0; k < 8; ++k) {
        float* d = v0 + (k0 + k) * vs + i0;
        _mm256_stream_ps(d, t[k]);
        _mm256_stream_ps(d + 8, u[k]);
      }
    }
    for (; i0 < n8; i0 += 8) {
      __m256 t[8];
      vals_block8(rows, row_stride, g0, lo + i0, inv, k0, t);
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(v0 + (k0 + k) * vs + i0, t[k]);
    }
    for (int64_t i = n8; i < nm; ++i) {  // the last genes of these 8 samples
      const int64_t gg = lo[i];
      const uint32_t* R = rows + (gg - g0) * row_stride;
      for (int64_t k = k0; k < k0 + 8; ++k)
        v0[k * vs + i] = static_cast<float>(R[k]) * inv[gg];
    }
  }
  if (n16) _mm_sfence();  // streaming stores are weakly ordered: drain them here
  return k8;
}
#endif

#ifdef BULKFORMER_X86
// One 8 × 8 block of fused_rows_avx2: genes i0 .. i0 + 7 of samples k0 .. k0 + 7.
__attribute__((target("avx2"))) static inline void fused_block8(
    const uint32_t* rows, int64_t row_stride, int64_t g0, int64_t i0, const float* inv,
    int64_t k0, double* d, int64_t lane_stride, __m256i& nz, __m256i& t0, __m256i& t1,
    __m256* t) {
  const __m256i zero = _mm256_setzero_si256();
  __m256 r[8];
  for (int j = 0; j < 8; ++j) {
    const int64_t g = g0 + i0 + j;
    const __m256i c = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(rows + (i0 + j) * row_stride + k0));
    nz = _mm256_sub_epi32(nz, _mm256_andnot_si256(_mm256_cmpeq_epi32(c, zero),
                                                  _mm256_set1_epi32(-1)));
    t0 = _mm256_add_epi64(t0, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(c)));
    t1 = _mm256_add_epi64(t1, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(c, 1)));
    r[j] = _mm256_mul_ps(u32_to_ps(c), _mm256_set1_ps(inv[g]));
    double* dl = d + (g & 3) * lane_stride + k0;
    _mm256_storeu_pd(dl, _mm256_add_pd(_mm256_loadu_pd(dl),
                                       _mm256_cvtps_pd(_mm256_castps256_ps128(r[j]))));
    _mm256_storeu_pd(dl + 4, _mm256_add_pd(_mm256_loadu_pd(dl + 4),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(r[j], 1))));
  }
  transpose8(r, t);
}

// accumulate_rows when every gene of the batch is mapped, in order (full width, identity map):
// gene_row_avx2 and scatter_vals_avx2 in one pass, so each count is loaded and converted once.
// Samples [0, K8) (K8 a multiple of 8) × genes [0, n8) (n8 a multiple of 8) of rows, whose
// first gene is g0: per 8 samples, the QC counters and the four denominator lanes take the
// genes in gene order (the same operations as gene_row_avx2, gene by gene), and the 8 × 8
// blocks of C/L go to the value rows (pairs of blocks as whole 64-byte lines, streamed, when
// the rows are aligned; as scatter_vals_avx2).
__attribute__((target("avx2"))) static void fused_rows_avx2(
    const uint32_t* rows, int64_t row_stride, int64_t g0, int64_t n8, const float* inv,
    int64_t K8, double* d, int64_t lane_stride, int32_t* nnz, uint64_t* tot, float* v0,
    int64_t vs) {
  const bool stream = vs % 16 == 0 && reinterpret_cast<uintptr_t>(v0) % 64 == 0;
  const int64_t step = stream ? 16 : 8;
  const int64_t n_step = n8 / step * step;
  for (int64_t k0 = 0; k0 < K8; k0 += 8) {
    __m256i nz = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nnz + k0));
    __m256i t0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tot + k0));
    __m256i t1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tot + k0 + 4));
    int64_t i0 = 0;
    for (; i0 < n_step; i0 += step) {
      __m256 t[8], u[8];
      fused_block8(rows, row_stride, g0, i0, inv, k0, d, lane_stride, nz, t0, t1, t);
      if (stream) {
        fused_block8(rows, row_stride, g0, i0 + 8, inv, k0, d, lane_stride, nz, t0, t1, u);
        for (int k = 0; k < 8; ++k) {
          float* dst = v0 + (k0 + k) * vs + i0;
          _mm256_stream_ps(dst, t[k]);
          _mm256_stream_ps(dst + 8, u[k]);
        }
      } else {
        for (int k = 0; k < 8; ++k) _mm256_storeu_ps(v0 + (k0 + k) * vs + i0, t[k]);
      }
    }
    for (; i0 < n8; i0 += 8) {  // the last 8 genes when pairs are streamed
      __m256 t[8];
      fused_block8(rows, row_stride, g0, i0, inv, k0, d, lane_stride, nz, t0, t1, t);
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(v0 + (k0 + k) * vs + i0, t[k]);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(nnz + k0), nz);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tot + k0), t0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tot + k0 + 4), t1);
  }
  if (stream) _mm_sfence();
}
#endif

template <bool kValues>
static void gene_row(const uint32_t* R, int64_t K, float f, double* dl, int32_t* nnz,
                     uint64_t* tot) {
#ifdef BULKFORMER_X86
  if (use_avx2()) return gene_row_avx2<kValues>(R, K, f, dl, nnz, tot);
#endif
  gene_row_generic<kValues>(R, K, f, dl, nnz, tot);
}

// Samples per tile of accumulate_rows: the group's accumulators for a tile (nnz, tot and the
// four denominator lanes: 44 bytes per sample) stay in L1 while every gene row of the batch
// passes over them, and the tile's slice of the chunk (genes × 128 × 4 bytes) stays in L2
// between the accumulation and the value-row pass that reads it again. Whole groups (1,000
// samples: 44 KB of accumulators) spilled to L2 on every gene row.
constexpr int64_t kSampleTile = 128;

void accumulate_rows(const NormPlan& plan, GroupAcc& ga, int64_t g0, int64_t g1,
                     const uint32_t* rows, int64_t row_stride, float* vals0,
                     int64_t vals_stride) {
  const int64_t K = ga.K;
  const float* inv = plan.inv_len_f.data();
  const int64_t* mg = plan.mapped_gene.data();
  const int64_t* lo = std::lower_bound(mg, mg + plan.mapped_gene.size(), g0);
  const int64_t* hi = std::lower_bound(lo, mg + plan.mapped_gene.size(), g1);
  const int64_t m0 = lo - mg, nm = hi - lo;
  // Each sample still receives its genes in gene order, lane g & 3, whatever the tiling.
  for (int64_t kt = 0; kt < K; kt += kSampleTile) {
    const int64_t Kt = std::min(kSampleTile, K - kt);
    const uint32_t* rt = rows + kt;
    int32_t* nnz = ga.nnz.data() + kt;
    uint64_t* tot = ga.tot.data() + kt;
    if (!vals0) {  // QC only
      for (int64_t g = g0; g < g1; ++g)
        gene_row<false>(rt + (g - g0) * row_stride, Kt, 0.0f, nullptr, nnz, tot);
      continue;
    }
    float* vt = vals0 + m0 + kt * vals_stride;
    int64_t k_done = 0;
#ifdef BULKFORMER_X86
    if (use_avx2() && nm == g1 - g0 && Kt >= 8) {
      // every gene of the batch is mapped (mapped genes are sorted and distinct, so they are
      // g0 .. g1 - 1 in order): one pass for QC, denominators and value rows. Samples
      // [0, K8) × genes [0, n8) first, then the last genes of those samples, in gene order,
      // then the last samples (independent of the others).
      const int64_t K8 = Kt & ~int64_t{7}, n8 = nm & ~int64_t{7};
      double* d = ga.d.data() + kt;
      fused_rows_avx2(rt, row_stride, g0, n8, inv, K8, d, K, nnz, tot, vt, vals_stride);
      for (int64_t i = n8; i < nm; ++i) {
        const int64_t g = g0 + i;
        const uint32_t* R = rt + i * row_stride;
        gene_row<true>(R, K8, inv[g], d + (g & 3) * K, nnz, tot);
        for (int64_t k = 0; k < K8; ++k) vt[k * vals_stride + i] = static_cast<float>(R[k]) * inv[g];
      }
      if (K8 < Kt) {
        for (int64_t g = g0; g < g1; ++g)
          gene_row<true>(rt + (g - g0) * row_stride + K8, Kt - K8, inv[g],
                         d + (g & 3) * K + K8, nnz + K8, tot + K8);
      }
      k_done = K8;
    } else
#endif
    {
      for (int64_t g = g0; g < g1; ++g)
        gene_row<true>(rt + (g - g0) * row_stride, Kt, inv[g], ga.d.data() + (g & 3) * K + kt,
                       nnz, tot);
      // C/L of the mapped genes into each sample's row of vals (mapped order, as accumulate())
#ifdef BULKFORMER_X86
      if (use_avx2())
        k_done = scatter_vals_avx2(rt, row_stride, g0, lo, nm, inv, Kt, vt, vals_stride);
#endif
    }
    for (int64_t i = 0; i < nm; ++i) {  // samples the 8 × 8 blocks did not cover
      const int64_t gg = lo[i];
      const uint32_t* R = rt + (gg - g0) * row_stride;
      const float f = inv[gg];
      float* v = vt + i;
      for (int64_t k = k_done; k < Kt; ++k) v[k * vals_stride] = static_cast<float>(R[k]) * f;
    }
  }
}

void flush_group(const GroupAcc& ga, SampleAcc* accs) {
  const int64_t K = ga.K;
  for (int64_t k = 0; k < K; ++k) {
    SampleAcc& a = accs[k];
    for (int j = 0; j < 4; ++j) a.denom4[j] += ga.d[j * K + k];
    a.nonzero += ga.nnz[k];
    a.total += static_cast<double>(ga.tot[k]);
  }
}

void finish_sample(const NormPlan& plan, SampleAcc& acc, int64_t row, float* rowbuf) {
  const NormSpec& s = plan.spec;
  if (s.nonzero) s.nonzero[row] = acc.nonzero;
  if (s.total) s.total[row] = acc.total;
  if (s.mode == Mode::kCounts || s.out_type == OutType::kNone) return;
  const int64_t n = s.n_out;
  const double denom = (acc.denom4[0] + acc.denom4[1]) + (acc.denom4[2] + acc.denom4[3]);
  float scale = denom > 0 ? static_cast<float>(1e6 / denom) : 0.0f;
  if (s.mode == Mode::kTPM) scale = 1.0f;  // TPM as given: not renormalized
  float* v = rowbuf;
  const int32_t* mc = plan.mapped_col.data();
  const int64_t nm = plan.n_mapped();
  if (plan.identity) {
    v = acc.vals;  // output column m is mapped gene m: work in the sample's value row itself
  } else if (plan.injective) {
    // every covered column receives exactly one value (0 + x == x: same bits as the sum);
    // columns no gene reaches are written as 0 by log1p_row, whatever the buffer held
    for (int64_t m = 0; m < nm; ++m) v[mc[m]] = acc.vals[m];
  } else {
    // scatter C/L to output columns (duplicates summed in gene order, on every path)
    std::memset(v, 0, sizeof(float) * n);
    for (int64_t m = 0; m < nm; ++m) v[mc[m]] += acc.vals[m];
  }
  // log1p(TPM) goes straight to the output row (float32) or through a small buffer that stays
  // in L1 (float16), never back into v: for wide chunk columns v is a sample's value row in a
  // buffer of hundreds of MB, and dirtying it would write the whole buffer back to memory.
  const uint8_t* cov = plan.covered.data();
  if (s.out_type == OutType::kF32) {
    log1p_row(v, cov, n, scale, static_cast<float*>(s.out) + row * s.out_row_stride);
  } else if (s.out_type == OutType::kF16) {
    uint16_t* o = static_cast<uint16_t*>(s.out) + row * s.out_row_stride;
    constexpr int64_t kStep = 2048;
    float t[kStep];
    for (int64_t c = 0; c < n; c += kStep) {
      const int64_t len = std::min(kStep, n - c);
      log1p_row(v + c, cov + c, len, scale, t);
      f32_to_f16_row(t, o + c, len);
    }
  }
}

template <typename T>
void normalize_dense(const NormSpec& spec, const T* counts, int64_t n_rows, int64_t count_stride,
                     int threads) {
  NormPlan plan(spec);
  threads = resolve_threads(threads);
  const int64_t block = 16;
  const int64_t n_tasks = (n_rows + block - 1) / block;
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(n_tasks, 1)));
  const bool values = plan.needs_values();
  std::vector<std::vector<float>> vals(threads), rowbuf(threads);
  for (int t = 0; t < threads; ++t) {
    if (values) vals[t].assign(std::max<int64_t>(plan.n_mapped(), 1), 0.0f);
    if (values) rowbuf[t].assign(spec.n_out, 0.0f);
  }
  parallel_for(n_tasks, threads, [&](int wid, int64_t task) {
    const int64_t r0 = task * block, r1 = std::min(n_rows, r0 + block);
    for (int64_t r = r0; r < r1; ++r) {
      SampleAcc acc;
      begin_sample(plan, acc, r, values ? vals[wid].data() : nullptr);
      accumulate(plan, acc, 0, spec.n_src, counts + r * count_stride, 1);
      finish_sample(plan, acc, r, values ? rowbuf[wid].data() : nullptr);
    }
  });
}

namespace {
// true when any of the n floats is NaN or ±inf (exponent bits all set); an integer OR-reduction
// the compiler vectorizes.
BF_TARGET_CLONES
bool any_nonfinite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t c = 0; c < n; ++c) {
    uint32_t b;
    std::memcpy(&b, x + c, 4);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  return bad != 0;
}
}  // namespace

BF_TARGET_CLONES
int64_t block_moments(const float* x, int64_t n, int64_t G, const uint8_t* rows, double* mean,
                      double* m2) {
  for (int64_t c = 0; c < G; ++c) mean[c] = 0.0, m2[c] = 0.0;
  // every row (selected or not) is checked for NaN/inf first, while it is in cache anyway
  int64_t used = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (any_nonfinite(x + r * G, G)) return r;
    used += (!rows || rows[r]) ? 1 : 0;
  }
  if (used == 0) return -1;
  for (int64_t r = 0; r < n; ++r) {
    if (rows && !rows[r]) continue;
    const float* row = x + r * G;
    for (int64_t c = 0; c < G; ++c) mean[c] += static_cast<double>(row[c]);
  }
  const double inv = 1.0 / static_cast<double>(used);
  for (int64_t c = 0; c < G; ++c) mean[c] *= inv;
  for (int64_t r = 0; r < n; ++r) {
    if (rows && !rows[r]) continue;
    const float* row = x + r * G;
    for (int64_t c = 0; c < G; ++c) {
      const double d = static_cast<double>(row[c]) - mean[c];
      m2[c] += d * d;
    }
  }
  return -1;
}

BF_TARGET_CLONES
static void standardize_row(const float* v, const float* shift, const float* scale, float* t,
                            int64_t G) {
  constexpr float kMax = 65504.0f;
  for (int64_t c = 0; c < G; ++c) {
    const float z = (v[c] - shift[c]) * scale[c];
    t[c] = z < -kMax ? -kMax : (z > kMax ? kMax : z);
  }
}

void standardize(const float* v, int64_t n, int64_t G, const int64_t* src, const float* shift,
                 const float* scale, int64_t n_src, void* out, OutType out_type, int threads) {
  if (out_type != OutType::kF16 && out_type != OutType::kF32)
    throw std::invalid_argument("standardize writes float16 or float32");
  for (int64_t r = 0; r < n; ++r) {
    const int64_t s = src ? src[r] : 0;
    if (s < 0 || s >= n_src) throw std::invalid_argument("source index out of range");
  }
  threads = resolve_threads(threads);
  const int64_t rows_per_task = std::max<int64_t>(1, (n + 4 * threads - 1) / (4 * threads));
  const int64_t n_tasks = (n + rows_per_task - 1) / rows_per_task;
  const bool f16 = out_type == OutType::kF16;
  std::vector<std::vector<float>> tmp(std::max(1, threads), std::vector<float>(f16 ? G : 0));
  parallel_for(n_tasks, threads, [&](int wid, int64_t task) {
    const int64_t r1 = std::min(n, (task + 1) * rows_per_task);
    for (int64_t r = task * rows_per_task; r < r1; ++r) {
      const int64_t s = src ? src[r] : 0;
      if (f16) {
        float* t = tmp[wid].data();
        standardize_row(v + r * G, shift + s * G, scale + s * G, t, G);
        f32_to_f16_row(t, static_cast<uint16_t*>(out) + r * G, G);
      } else {
        standardize_row(v + r * G, shift + s * G, scale + s * G, static_cast<float*>(out) + r * G,
                        G);
      }
    }
  });
}

template void accumulate<uint32_t>(const NormPlan&, SampleAcc&, int64_t, int64_t,
                                   const uint32_t*, int64_t);
template void accumulate<double>(const NormPlan&, SampleAcc&, int64_t, int64_t, const double*,
                                 int64_t);
template void normalize_dense<uint32_t>(const NormSpec&, const uint32_t*, int64_t, int64_t, int);
template void normalize_dense<double>(const NormSpec&, const double*, int64_t, int64_t, int);

}  // namespace bulkformer
