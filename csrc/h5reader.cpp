#include "h5reader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

#include "inflate.h"
#include "switches.h"
#include "threadpool.h"

namespace bulkformer {
namespace {

static_assert(sizeof(uint32_t) == 4, "uint32");

class File {
 public:
  explicit File(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY);
    if (fd_ < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  }
  ~File() {
    if (fd_ >= 0) ::close(fd_);
  }
  void pread_all(uint8_t* buf, int64_t size, int64_t offset, const std::string& what) const {
    int64_t done = 0;
    while (done < size) {
      ssize_t r = ::pread(fd_, buf + done, static_cast<size_t>(size - done), offset + done);
      if (r < 0) {
        if (errno == EINTR) continue;
        throw std::runtime_error(path_ + ": read error in " + what + ": " + std::strerror(errno));
      }
      if (r == 0)
        throw std::runtime_error(path_ + ": " + what + " extends past the end of the file "
                                 "(truncated or corrupt file)");
      done += r;
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// Per-thread buffers for one chunk.
struct ChunkBuffers {
  std::vector<uint8_t> raw, a, b;
  Inflater inflater;
};

std::string chunk_name(const ChunkedMatrix& m, int64_t r, int64_t c) {
  return "chunk (" + std::to_string(r * m.chunk_genes) + ", " +
         std::to_string(c * m.chunk_samples) + ") [genes, samples] at byte offset " +
         std::to_string(m.offsets[r * m.grid_cols + c]);
}

// Reads and decodes chunk (r, c). Returns nullptr for a chunk that was never written (all
// zeros, HDF5's default fill value), else a pointer to chunk_bytes() decoded bytes.
const uint32_t* load_chunk(const ChunkedMatrix& m, const File& f, ChunkBuffers& bufs, int64_t r,
                           int64_t c) {
  const int64_t idx = r * m.grid_cols + c;
  const int64_t off = m.offsets[idx];
  if (off < 0) return nullptr;
  const int64_t size = m.sizes[idx];
  const uint32_t mask = m.masks[idx];
  const int64_t nbytes = m.chunk_bytes();
  if (size <= 0 || size > (int64_t{1} << 40))
    throw std::runtime_error(m.path + ": " + chunk_name(m, r, c) + " has an invalid stored size " +
                             std::to_string(size));
  bufs.raw.resize(static_cast<size_t>(size));
  f.pread_all(bufs.raw.data(), size, off, chunk_name(m, r, c));
  const uint8_t* cur = bufs.raw.data();
  int64_t cur_size = size;
  bool into_a = true;
  for (int i = static_cast<int>(m.filters.size()) - 1; i >= 0; --i) {
    if (mask & (1u << i)) continue;  // this filter was skipped when the chunk was written
    std::vector<uint8_t>& dst = into_a ? bufs.a : bufs.b;
    dst.resize(static_cast<size_t>(nbytes));
    if (m.filters[i] == kFilterDeflate) {
      std::string err = bufs.inflater.inflate(cur, cur_size, dst.data(), nbytes);
      if (!err.empty())
        throw std::runtime_error(m.path + ": " + chunk_name(m, r, c) + " failed to inflate: " +
                                 err + " (corrupt file?)");
    } else if (m.filters[i] == kFilterShuffle) {
      if (cur_size != nbytes)
        throw std::runtime_error(m.path + ": " + chunk_name(m, r, c) + " has " +
                                 std::to_string(cur_size) + " bytes before unshuffle, expected " +
                                 std::to_string(nbytes));
      unshuffle(cur, dst.data(), nbytes, 4);
    } else {
      throw std::runtime_error(m.path + ": unsupported HDF5 filter id " +
                               std::to_string(m.filters[i]));
    }
    cur = dst.data();
    cur_size = nbytes;
    into_a = !into_a;
  }
  if (cur_size != nbytes)
    throw std::runtime_error(m.path + ": " + chunk_name(m, r, c) + " holds " +
                             std::to_string(cur_size) + " bytes, expected " +
                             std::to_string(nbytes));
  return reinterpret_cast<const uint32_t*>(cur);
}

struct Task {
  int64_t col;
  std::vector<int64_t> rows;  // output rows whose sample lies in this chunk column
};

std::vector<Task> plan_tasks(const ChunkedMatrix& m, const int64_t* samples, int64_t n,
                             int64_t max_group) {
  std::map<int64_t, std::vector<int64_t>> by_col;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t s = samples[k];
    if (s < 0 || s >= m.n_samples)
      throw std::out_of_range("sample index " + std::to_string(s) + " out of range [0, " +
                              std::to_string(m.n_samples) + ")");
    by_col[s / m.chunk_samples].push_back(k);
  }
  std::vector<Task> tasks;
  for (auto& kv : by_col) {
    auto& rows = kv.second;
    for (size_t i = 0; i < rows.size(); i += static_cast<size_t>(max_group)) {
      Task t;
      t.col = kv.first;
      t.rows.assign(rows.begin() + i,
                    rows.begin() + std::min(rows.size(), i + static_cast<size_t>(max_group)));
      tasks.push_back(std::move(t));
    }
  }
  // biggest first, so a lone wide column does not finish last
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& x, const Task& y) { return x.rows.size() > y.rows.size(); });
  return tasks;
}

void check_matrix(const ChunkedMatrix& m) {
  if (m.chunk_genes <= 0 || m.chunk_samples <= 0)
    throw std::invalid_argument("chunk shape must be positive");
  if (m.grid_rows != (m.n_genes + m.chunk_genes - 1) / m.chunk_genes ||
      m.grid_cols != (m.n_samples + m.chunk_samples - 1) / m.chunk_samples)
    throw std::invalid_argument("chunk grid does not match dataset and chunk shapes");
  for (int f : m.filters)
    if (f != kFilterDeflate && f != kFilterShuffle)
      throw std::invalid_argument("unsupported HDF5 filter id " + std::to_string(f));
}

}  // namespace

void read_normalize(const ChunkedMatrix& m, const int64_t* samples, int64_t n,
                    const NormSpec& spec, const ReadOptions& opt) {
  check_matrix(m);
  if (spec.n_src != m.n_genes) throw std::invalid_argument("gene_map length != genes in file");
  NormPlan plan(spec);
  const bool values = plan.needs_values();
  const int64_t row_len = std::max<int64_t>(plan.n_mapped(), 1);  // per-sample C/L values
  int64_t max_group = int64_t{1} << 40;
  if (values) max_group = std::max<int64_t>(1, opt.max_scratch_bytes / (4 * row_len));
  std::vector<Task> tasks = plan_tasks(m, samples, n, max_group);
  const int threads =
      std::min<int>(resolve_threads(opt.threads), std::max<int>(1, static_cast<int>(tasks.size())));
  File f(m.path);
  std::vector<ChunkBuffers> bufs(threads);
  std::vector<std::vector<float>> scr(threads), rowbuf(threads);
  std::vector<std::vector<uint32_t>> tbuf(threads);
  if (values)
    for (auto& rb : rowbuf) rb.assign(spec.n_out, 0.0f);
  std::vector<GroupAcc> groups(threads);
  // set_gene_major(false) forces the transposing path (tests compare the two bit for bit)
  const bool gene_major =
      !m.transposed && spec.mode != Mode::kCounts && switches::gene_major.load();
  parallel_for(static_cast<int64_t>(tasks.size()), threads, [&](int wid, int64_t ti) {
    const Task& t = tasks[ti];
    const int64_t g = static_cast<int64_t>(t.rows.size());
    std::vector<SampleAcc> accs(g);
    std::vector<int64_t> local(g);
    for (int64_t k = 0; k < g; ++k) local[k] = samples[t.rows[k]] - t.col * m.chunk_samples;
    if (values) scr[wid].resize(static_cast<size_t>(g * row_len));
    for (int64_t k = 0; k < g; ++k)
      begin_sample(plan, accs[k], t.rows[k], values ? scr[wid].data() + k * row_len : nullptr);
    // Gene-major chunks whose requested samples are one contiguous run (the usual case: whole
    // chunk columns) of at least 8 (one SIMD step; shorter runs are faster transposed):
    // accumulate straight from the chunk's gene rows, across samples.
    bool run = gene_major && g >= 8;
    for (int64_t k = 1; run && k < g; ++k) run = local[k] == local[0] + k;
    GroupAcc& ga = groups[wid];
    if (run) ga.reset(g);
    for (int64_t r = 0; r < m.grid_rows; ++r) {
      const uint32_t* data = load_chunk(m, f, bufs[wid], r, t.col);
      const int64_t g0 = r * m.chunk_genes, g1 = std::min(m.n_genes, g0 + m.chunk_genes);
      if (!data) {  // unwritten chunk: all zeros (nothing to add, values set to 0)
        for (int64_t k = 0; k < g; ++k) zero_piece(plan, accs[k], g0, g1);
        continue;
      }
      if (run) {
        accumulate_rows(plan, ga, g0, g1, data + local[0], m.chunk_samples,
                        values ? scr[wid].data() : nullptr, row_len);
        continue;
      }
      const int64_t rows_here = g1 - g0;
      if (m.transposed) {  // storage is sample-major already
        for (int64_t k = 0; k < g; ++k)
          accumulate(plan, accs[k], g0, g1, data + local[k] * m.chunk_genes, 1);
        continue;
      }
      // Gene-major chunk: gather the requested columns into sample-major rows first (tiled,
      // so both sides stay in cache), then every sample is one contiguous pass.
      std::vector<uint32_t>& T = tbuf[wid];
      T.resize(static_cast<size_t>(g * rows_here));
      const int64_t cs = m.chunk_samples;
      constexpr int64_t kTile = 64;
      for (int64_t gb = 0; gb < rows_here; gb += kTile) {
        const int64_t ge = std::min(rows_here, gb + kTile);
        for (int64_t k = 0; k < g; ++k) {
          const uint32_t* src = data + local[k];
          uint32_t* dst = T.data() + k * rows_here;
          for (int64_t gl = gb; gl < ge; ++gl) dst[gl] = src[gl * cs];
        }
      }
      for (int64_t k = 0; k < g; ++k)
        accumulate(plan, accs[k], g0, g1, T.data() + k * rows_here, 1);
    }
    if (run) flush_group(ga, accs.data());
    for (int64_t k = 0; k < g; ++k)
      finish_sample(plan, accs[k], t.rows[k], values ? rowbuf[wid].data() : nullptr);
  });
}

int64_t read_inflate_only(const ChunkedMatrix& m, const int64_t* samples, int64_t n,
                          const ReadOptions& opt) {
  check_matrix(m);
  std::vector<Task> tasks = plan_tasks(m, samples, n, int64_t{1} << 40);
  const int threads =
      std::min<int>(resolve_threads(opt.threads), std::max<int>(1, static_cast<int>(tasks.size())));
  File f(m.path);
  std::vector<ChunkBuffers> bufs(threads);
  std::vector<int64_t> bytes(threads, 0);
  parallel_for(static_cast<int64_t>(tasks.size()), threads, [&](int wid, int64_t ti) {
    for (int64_t r = 0; r < m.grid_rows; ++r)
      if (load_chunk(m, f, bufs[wid], r, tasks[ti].col)) bytes[wid] += m.chunk_bytes();
  });
  int64_t total = 0;
  for (int64_t b : bytes) total += b;
  return total;
}

}  // namespace bulkformer
