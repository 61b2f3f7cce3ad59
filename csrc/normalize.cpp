#include "normalize.h"

#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "half.h"
#include "threadpool.h"

namespace bulkformer {

NormPlan::NormPlan(const NormSpec& s) : spec(s) {
  inv_len.assign(s.n_src, 0.0);
  covered.assign(s.n_out, 0);
  for (int64_t j = 0; j < s.n_src; ++j) {
    const double L = s.lengths ? s.lengths[j] : 1.0;
    const bool ok = std::isfinite(L) && L > 0;
    inv_len[j] = ok ? 1.0 / L : 0.0;
    const int64_t col = s.gene_map[j];
    if (col >= s.n_out) throw std::invalid_argument("gene_map value out of range");
    if (col >= 0 && (ok || s.mode == Mode::kCounts)) covered[col] = 1;
  }
  if (s.mode == Mode::kZScore) {
    zmean.resize(s.n_out);
    zinv.resize(s.n_out);
    for (int64_t c = 0; c < s.n_out; ++c) {
      const double sd = s.stdev[c];
      const bool good = covered[c] && std::isfinite(sd) && sd > 0 && std::isfinite(s.mean[c]);
      zmean[c] = good ? static_cast<float>(s.mean[c]) : 0.0f;
      zinv[c] = good ? static_cast<float>(1.0 / sd) : 0.0f;
    }
  }
}

bool NormPlan::needs_scratch() const {
  return spec.out_type == OutType::kF16 || spec.out_type == OutType::kNone;
}

void LocalStats::reset(int64_t n_out) {
  count = 0.0;
  mean.assign(n_out, 0.0);
  m2.assign(n_out, 0.0);
}

void LocalStats::merge_into(double* st, int64_t n_out) const {
  if (count == 0.0) return;
  double* cnt = st;
  double* mu = st + n_out;
  double* M2 = st + 2 * n_out;
  for (int64_t c = 0; c < n_out; ++c) {
    const double n = cnt[c] + count;
    const double delta = mean[c] - mu[c];
    const double frac = count / n;
    mu[c] += delta * frac;
    M2[c] += m2[c] + delta * delta * cnt[c] * frac;
    cnt[c] = n;
  }
}

void begin_sample(const NormPlan& plan, SampleAcc& acc, int64_t row, float* scratch) {
  const NormSpec& s = plan.spec;
  acc.denom = 0.0;
  acc.nonzero = 0;
  acc.total = 0.0;
  if (s.out_type == OutType::kF32) {
    acc.scratch = static_cast<float*>(s.out) + row * s.out_row_stride;
  } else if (s.out_type == OutType::kU32) {
    // counts mode only: accumulate straight into the uint32 row
    acc.scratch = reinterpret_cast<float*>(static_cast<uint32_t*>(s.out) + row * s.out_row_stride);
  } else {
    acc.scratch = scratch;
  }
  if (acc.scratch && (s.out_type != OutType::kNone || s.stats))
    std::memset(acc.scratch, 0, sizeof(float) * s.n_out);
}

template <typename T>
void accumulate(const NormPlan& plan, SampleAcc& acc, int64_t g0, int64_t g1, const T* src,
                int64_t stride) {
  const NormSpec& s = plan.spec;
  const int64_t* map = s.gene_map;
  const double* inv = plan.inv_len.data();
  const bool values = s.out_type != OutType::kNone || s.stats != nullptr;
  const bool counts_mode = s.mode == Mode::kCounts;
  int64_t nnz = 0;
  double total = 0.0, denom = 0.0;
  float* scr = acc.scratch;
  for (int64_t g = g0; g < g1; ++g, src += stride) {
    const T c = *src;
    if (c == 0) continue;
    ++nnz;
    const double cd = static_cast<double>(c);
    total += cd;
    if (!values) continue;
    const int64_t col = map[g];
    if (counts_mode) {
      if (col < 0) continue;
      if (s.out_type == OutType::kU32)
        reinterpret_cast<uint32_t*>(scr)[col] += static_cast<uint32_t>(c);
      else
        scr[col] += static_cast<float>(cd);
      continue;
    }
    const double r = cd * inv[g];
    denom += r;
    if (col >= 0) scr[col] += static_cast<float>(r);
  }
  acc.nonzero += nnz;
  acc.total += total;
  acc.denom += denom;
}

void finish_sample(const NormPlan& plan, SampleAcc& acc, int64_t row, LocalStats* stats) {
  const NormSpec& s = plan.spec;
  if (s.nonzero) s.nonzero[row] = acc.nonzero;
  if (s.total) s.total[row] = acc.total;
  if (s.mode == Mode::kCounts || (s.out_type == OutType::kNone && !stats)) return;
  const int64_t n = s.n_out;
  const float scale = acc.denom > 0 ? static_cast<float>(1e6 / acc.denom) : 0.0f;
  float* v = acc.scratch;
  const uint8_t* cov = plan.covered.data();
  // log1p(TPM) in place
  for (int64_t c = 0; c < n; ++c) {
    const float x = v[c];
    v[c] = (x != 0.0f && cov[c]) ? std::log1p(x * scale) : 0.0f;
  }
  if (stats) {
    stats->count += 1.0;
    const double inv_n = 1.0 / stats->count;
    double* mu = stats->mean.data();
    double* m2 = stats->m2.data();
    for (int64_t c = 0; c < n; ++c) {
      const double x = v[c];
      const double d = x - mu[c];
      mu[c] += d * inv_n;
      m2[c] += d * (x - mu[c]);
    }
  }
  if (s.mode == Mode::kZScore) {
    const float* zm = plan.zmean.data();
    const float* zi = plan.zinv.data();
    for (int64_t c = 0; c < n; ++c) v[c] = (v[c] - zm[c]) * zi[c];
  }
  if (s.out_type == OutType::kF16) {
    uint16_t* o = static_cast<uint16_t*>(s.out) + row * s.out_row_stride;
    for (int64_t c = 0; c < n; ++c) o[c] = float_to_half(v[c]);
  }
  // kF32: values already sit in the output row
}

template <typename T>
void normalize_dense(const NormSpec& spec, const T* counts, int64_t n_rows, int64_t count_stride,
                     int threads) {
  NormPlan plan(spec);
  threads = resolve_threads(threads);
  const int64_t block = 16;
  const int64_t n_tasks = (n_rows + block - 1) / block;
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(n_tasks, 1)));
  std::vector<std::vector<float>> scratch(threads);
  std::vector<LocalStats> stats(threads);
  for (int t = 0; t < threads; ++t) {
    if (plan.needs_scratch()) scratch[t].assign(spec.n_out, 0.0f);
    if (spec.stats) stats[t].reset(spec.n_out);
  }
  parallel_for(n_tasks, threads, [&](int wid, int64_t task) {
    const int64_t r0 = task * block, r1 = std::min(n_rows, r0 + block);
    for (int64_t r = r0; r < r1; ++r) {
      SampleAcc acc;
      begin_sample(plan, acc, r, plan.needs_scratch() ? scratch[wid].data() : nullptr);
      accumulate(plan, acc, 0, spec.n_src, counts + r * count_stride, 1);
      const bool use = spec.stats && (!spec.stats_rows || spec.stats_rows[r]);
      finish_sample(plan, acc, r, use ? &stats[wid] : nullptr);
    }
  });
  if (spec.stats)
    for (auto& st : stats) st.merge_into(spec.stats, spec.n_out);
}

template void accumulate<uint32_t>(const NormPlan&, SampleAcc&, int64_t, int64_t,
                                   const uint32_t*, int64_t);
template void accumulate<double>(const NormPlan&, SampleAcc&, int64_t, int64_t, const double*,
                                 int64_t);
template void normalize_dense<uint32_t>(const NormSpec&, const uint32_t*, int64_t, int64_t, int);
template void normalize_dense<double>(const NormSpec&, const double*, int64_t, int64_t, int);

}  // namespace bulkformer
