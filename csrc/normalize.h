// Fused count -> TPM -> log1p normalization and per-sample QC, and the one z-score routine
// (standardize). Pure C++: no Python here. Used by the HDF5 chunk reader (h5reader.cpp) and, for
// numbers already in memory (GDC, .h5ad, arrays, the h5py fallback), by normalize_dense().
//
// Definitions (docs/engine.md): for sample s and source gene j with length L[j] (bp),
//   TPM[j] = (C[j] / L[j]) / sum_k (C[k] / L[k]) * 1e6   over genes k with a known length,
//   v = log1p(TPM) mapped to output column gene_map[j] (duplicates summed, -1 dropped);
//   columns no gene reaches are 0. Mode kTPM takes TPM as given (no lengths, no renormalizing).
//   z = clip((v - shift) * scale, +-65504) with shift = mean, scale = 1/std (0 where std is 0,
//   not finite, or the gene is missing).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bulkformer {

// kCounts: raw counts summed per output column; kLog1pTPM: counts -> TPM -> log1p;
// kTPM: the numbers are TPM already -> log1p (lengths ignored, every mapped gene covered).
enum class Mode : int { kCounts = 0, kLog1pTPM = 1, kTPM = 2 };
enum class OutType : int { kNone = 0, kF32 = 1, kF16 = 2, kU32 = 3 };

// Everything a normalization call needs; pointers are borrowed (owned by the caller).
struct NormSpec {
  int64_t n_src = 0;                   // source genes
  int64_t n_out = 0;                   // output columns
  const int64_t* gene_map = nullptr;   // [n_src] output column or -1
  const double* lengths = nullptr;     // [n_src] bp; <= 0 or non-finite = unknown
  Mode mode = Mode::kLog1pTPM;
  OutType out_type = OutType::kNone;   // kNone: QC only
  void* out = nullptr;                 // [n_rows, n_out] row-major, rows = requested samples
  int64_t out_row_stride = 0;          // elements between rows of `out`
  int64_t* nonzero = nullptr;          // [n_rows] QC: non-zero source genes
  double* total = nullptr;             // [n_rows] QC: total counts
};

// Derived per-call tables (1/L, validity, coverage).
struct NormPlan {
  explicit NormPlan(const NormSpec& spec);
  const NormSpec& spec;
  std::vector<float> inv_len_f;     // [n_src] 1/L in float32, 0 when the length is unknown
  std::vector<int64_t> mapped_gene;  // source genes with an output column and a length (sorted)
  std::vector<int32_t> mapped_col;   // their output columns
  std::vector<uint8_t> covered;     // [n_out]
  bool needs_values() const;        // log1p values are computed (out requested, not counts)
  int64_t n_mapped() const { return static_cast<int64_t>(mapped_gene.size()); }
};

// Running state of one sample while its genes arrive (in gene order, in any number of pieces).
struct SampleAcc {
  // log1p modes: C/L of each mapped gene, in mapped (= source gene) order. Chunk rows arrive
  // in gene order, so these writes stream; the scatter to output columns happens once, in
  // finish_sample, inside one hot row.
  float* vals = nullptr;     // [n_mapped]
  float* counts = nullptr;   // counts mode: the output row itself (float32 or uint32 bits)
  double denom4[4] = {0, 0, 0, 0};  // sum of C/L over genes of known length, 4 lanes (g % 4)
  int64_t nonzero = 0;
  double total = 0.0;
};

// Prepares acc for row `row`: `vals` (plan.n_mapped() floats, when plan.needs_values()) or,
// for counts, the output row itself.
void begin_sample(const NormPlan& plan, SampleAcc& acc, int64_t row, float* vals);

// Genes [g0, g1) of one sample are all zero (an unwritten chunk): sets their values to 0.
// Every gene range must be either accumulated or zeroed once per sample.
void zero_piece(const NormPlan& plan, SampleAcc& acc, int64_t g0, int64_t g1);

// Adds source genes [g0, g1) of one sample; src[(g - g0) * stride] is gene g's count.
template <typename T>
void accumulate(const NormPlan& plan, SampleAcc& acc, int64_t g0, int64_t g1, const T* src,
                int64_t stride);

// Gene-major accumulation for a group of K samples whose counts are contiguous in every gene
// row of a chunk (wide, genes x samples chunks): no transposition. Per-sample partial sums are
// kept in arrays indexed by sample, so the loops run (SIMD) across samples; every sample still
// receives its genes in gene order, lane g % 4 of the denominator as in accumulate(): the
// results are bit-identical to the sample-major path.
struct GroupAcc {
  int64_t K = 0;
  std::vector<double> d;      // [4][K] TPM denominator lanes
  std::vector<int32_t> nnz;   // [K] non-zero genes
  std::vector<uint64_t> tot;  // [K] total counts
  void reset(int64_t k);
};

// Genes [g0, g1) of the group: gene g's counts at rows + (g - g0) * row_stride, sample k at
// offset k. Values modes store C/L of the mapped genes at vals0 + k * vals_stride + (mapped
// index) (vals0 = null for QC only).
void accumulate_rows(const NormPlan& plan, GroupAcc& ga, int64_t g0, int64_t g1,
                     const uint32_t* rows, int64_t row_stride, float* vals0, int64_t vals_stride);

// Moves the group's sums into accs[0..K) (begun with begin_sample, nothing accumulated yet).
void flush_group(const GroupAcc& ga, SampleAcc* accs);

// Writes row `row` of out (and QC) from the finished accumulator; `rowbuf` is a per-thread
// buffer of n_out floats (values modes).
void finish_sample(const NormPlan& plan, SampleAcc& acc, int64_t row, float* rowbuf);

// Counts already in memory: counts[r * count_stride + j], rows in [0, n_rows).
template <typename T>
void normalize_dense(const NormSpec& spec, const T* counts, int64_t n_rows, int64_t count_stride,
                     int threads);

// Column means and sums of squared deviations of a row-major (n, G) float32 block, in float64,
// summing rows in order (deterministic; vectorized across columns). `rows` (n flags, or null
// for all) selects the rows used; the result equals that of the selected rows copied out.
// Every row, selected or not, is first checked for NaN/inf: the index of the first such row is
// returned (and the moments are not computed), -1 when all are finite.
int64_t block_moments(const float* x, int64_t n, int64_t G, const uint8_t* rows, double* mean,
                      double* m2);

// out[r, :] = clip((v[r, :] - shift[s, :]) * scale[s, :], ±65504) with s = src[r] (or 0 when src
// is null), in float32 without contraction, written as float16 (out_type kF16) or float32
// (kF32): bit-identical to the numpy expression ((v - shift) * scale).clip(...).astype(dtype).
// Rows are split across `threads`. The one z-score routine of the package.
void standardize(const float* v, int64_t n, int64_t G, const int64_t* src, const float* shift,
                 const float* scale, int64_t n_src, void* out, OutType out_type, int threads);

extern template void accumulate<uint32_t>(const NormPlan&, SampleAcc&, int64_t, int64_t,
                                          const uint32_t*, int64_t);
extern template void accumulate<double>(const NormPlan&, SampleAcc&, int64_t, int64_t,
                                        const double*, int64_t);
extern template void normalize_dense<uint32_t>(const NormSpec&, const uint32_t*, int64_t, int64_t,
                                               int);
extern template void normalize_dense<double>(const NormSpec&, const double*, int64_t, int64_t,
                                             int);

}  // namespace bulkformer
