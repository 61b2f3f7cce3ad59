// ThreadSanitizer driver for the engine's threaded read (`make tsan`): for each case written by
// make_cases.py (a chunked HDF5 file and its chunk index), reads all samples, a run and a
// random subset with read_normalize at 1 thread and at 2, 3 and 6 threads (spare workers
// decode chunk rows for running tasks: RowPipe), and requires the same bytes. TSan reports any
// data race; a mismatch exits 1. Built from the csrc sources directly: Python cannot preload
// libtsan here, so the pybind11 module is not used.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "h5reader.h"

using namespace bulkformer;

namespace {

struct Case {
  ChunkedMatrix m;
  std::vector<int64_t> offsets, sizes;
  std::vector<uint32_t> masks;
  std::vector<double> lengths;
};

bool load(const std::string& bin, Case& c) {
  std::ifstream in(bin, std::ios::binary);
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (pos + n > raw.size()) return false;
    std::memcpy(dst, raw.data() + pos, n);
    pos += n;
    return true;
  };
  int64_t head[6];
  if (!take(head, sizeof head)) return false;
  ChunkedMatrix& m = c.m;
  m.path = bin.substr(0, bin.size() - 4) + ".h5";
  m.n_genes = head[0], m.n_samples = head[1], m.chunk_genes = head[2], m.chunk_samples = head[3];
  m.transposed = head[4] != 0;
  for (int64_t i = 0; i < head[5]; ++i) {
    int64_t f;
    if (!take(&f, 8)) return false;
    m.filters.push_back(static_cast<int>(f));
  }
  m.grid_rows = (m.n_genes + m.chunk_genes - 1) / m.chunk_genes;
  m.grid_cols = (m.n_samples + m.chunk_samples - 1) / m.chunk_samples;
  const size_t n = static_cast<size_t>(m.grid_rows * m.grid_cols);
  c.offsets.resize(n), c.sizes.resize(n), c.masks.resize(n), c.lengths.resize(m.n_genes);
  if (!take(c.offsets.data(), 8 * n) || !take(c.sizes.data(), 8 * n) ||
      !take(c.masks.data(), 4 * n) || !take(c.lengths.data(), 8 * m.n_genes))
    return false;
  m.offsets = c.offsets.data(), m.sizes = c.sizes.data(), m.masks = c.masks.data();
  return pos == raw.size();
}

std::vector<float> read(const Case& c, const std::vector<int64_t>& s, int threads) {
  const int64_t G = c.m.n_genes, n = static_cast<int64_t>(s.size());
  std::vector<int64_t> gene_map(G);
  std::iota(gene_map.begin(), gene_map.end(), 0);
  for (int64_t g = 5; g < G; g += 7) gene_map[g] = -1;  // some genes dropped
  std::vector<float> out(n * G + 2 * n);
  std::vector<int64_t> nonzero(n);
  std::vector<double> total(n);
  NormSpec spec;
  spec.n_src = G, spec.n_out = G, spec.gene_map = gene_map.data();
  spec.lengths = c.lengths.data(), spec.mode = Mode::kLog1pTPM, spec.out_type = OutType::kF32;
  spec.out = out.data(), spec.out_row_stride = G;
  spec.nonzero = nonzero.data(), spec.total = total.data();
  ReadOptions opt;
  opt.threads = threads;
  read_normalize(c.m, s.data(), n, spec, opt);
  for (int64_t i = 0; i < n; ++i) {  // QC outputs compared too
    out[n * G + 2 * i] = static_cast<float>(nonzero[i]);
    out[n * G + 2 * i + 1] = static_cast<float>(total[i]);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int bad = 0, runs = 0;
  for (int a = 1; a < argc; ++a) {
    Case c;
    if (!load(argv[a], c)) {
      std::fprintf(stderr, "%s: not a case file written by make_cases.py\n", argv[a]);
      return 2;
    }
    std::vector<int64_t> all(c.m.n_samples), run, random;
    std::iota(all.begin(), all.end(), 0);
    for (int64_t i = 17; i < std::min<int64_t>(c.m.n_samples, 268); ++i) run.push_back(i);
    std::mt19937_64 rng(a);
    random = all;
    std::shuffle(random.begin(), random.end(), rng);
    random.resize(41);
    for (const auto* s : {&all, &run, &random}) {
      const std::vector<float> want = read(c, *s, 1);
      for (int threads : {2, 3, 6}) {
        for (int rep = 0; rep < 3; ++rep, ++runs) {
          if (read(c, *s, threads) != want) {
            std::fprintf(stderr, "%s: %zu samples, %d threads: output differs from 1 thread\n",
                         argv[a], s->size(), threads);
            ++bad;
          }
        }
      }
    }
  }
  std::printf("tsan_read: %d threaded reads, %d differ from 1 thread\n", runs, bad);
  return bad ? 1 : 0;
}
