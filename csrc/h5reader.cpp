#include "h5reader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <utility>

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

// (c is the chunk column, slot its position in the index arrays)
std::string chunk_name(const ChunkedMatrix& m, int64_t r, int64_t c, int64_t slot) {
  return "chunk (" + std::to_string(r * m.chunk_genes) + ", " +
         std::to_string(c * m.chunk_samples) + ") [genes, samples] at byte offset " +
         std::to_string(m.offsets[r * m.stored_cols() + slot]);
}

// Reads and decodes chunk (r, c), held at `slot` of the index. Returns nullptr for a chunk
// that was never written (all zeros, HDF5's default fill value), else a pointer to
// chunk_bytes() decoded bytes.
const uint32_t* load_chunk(const ChunkedMatrix& m, const File& f, ChunkBuffers& bufs, int64_t r,
                           int64_t c, int64_t slot) {
  const int64_t idx = r * m.stored_cols() + slot;
  const int64_t off = m.offsets[idx];
  if (off < 0) return nullptr;
  const int64_t size = m.sizes[idx];
  const uint32_t mask = m.masks[idx];
  const int64_t nbytes = m.chunk_bytes();
  if (size <= 0 || size > (int64_t{1} << 40))
    throw std::runtime_error(m.path + ": " + chunk_name(m, r, c, slot) +
                             " has an invalid stored size " + std::to_string(size));
  bufs.raw.resize(static_cast<size_t>(size));
  f.pread_all(bufs.raw.data(), size, off, chunk_name(m, r, c, slot));
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
        throw std::runtime_error(m.path + ": " + chunk_name(m, r, c, slot) +
                                 " failed to inflate: " + err + " (corrupt file?)");
    } else if (m.filters[i] == kFilterShuffle) {
      if (cur_size != nbytes)
        throw std::runtime_error(m.path + ": " + chunk_name(m, r, c, slot) + " has " +
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
    throw std::runtime_error(m.path + ": " + chunk_name(m, r, c, slot) + " holds " +
                             std::to_string(cur_size) + " bytes, expected " +
                             std::to_string(nbytes));
  return reinterpret_cast<const uint32_t*>(cur);
}

struct Task {
  int64_t col, slot;          // chunk column, its position in the index arrays
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
    // groups of equal size (not max_group and a small remainder, which would inflate the
    // whole column again for a few samples)
    const size_t n_groups = (rows.size() + max_group - 1) / static_cast<size_t>(max_group);
    const size_t step = (rows.size() + n_groups - 1) / n_groups;
    for (size_t i = 0; i < rows.size(); i += step) {
      Task t;
      t.col = kv.first;
      t.slot = m.slot(t.col);
      if (t.slot < 0)
        throw std::invalid_argument("the chunk index does not hold chunk column " +
                                    std::to_string(t.col));
      t.rows.assign(rows.begin() + i, rows.begin() + std::min(rows.size(), i + step));
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
  if (m.cols)
    for (int64_t i = 0; i < m.n_cols; ++i)
      if (m.cols[i] < 0 || m.cols[i] >= m.grid_cols || (i > 0 && m.cols[i] <= m.cols[i - 1]))
        throw std::invalid_argument("index columns must be sorted, unique and in the grid");
  for (int f : m.filters)
    if (f != kFilterDeflate && f != kFilterShuffle)
      throw std::invalid_argument("unsupported HDF5 filter id " + std::to_string(f));
}

// Per-sample value buffers outlive a call: for wide chunk columns they are large (1,000
// samples × 67,186 genes = 268 MB per thread), and on VMs the first touch of fresh pages costs
// more than the work done in them. The pool keeps up to kPoolBytes, or what the last call's
// threads held at once if that is more (one buffer per thread: keeping them does not raise the
// process's peak above what that call needed), but never more than an eighth of physical
// memory. release_scratch() frees them.
constexpr size_t kPoolBytes = size_t{512} << 20;

size_t pool_cap(size_t call_bytes) {
  static const size_t ram_eighth = [] {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<size_t>(pages) / 8 * static_cast<size_t>(page)
                                 : kPoolBytes;
  }();
  return std::max(kPoolBytes, std::min(call_bytes, ram_eighth));
}

// Allocator of the value buffers: elements are not zero-filled when a buffer grows (every
// value is written before it is read, and pooled buffers are reused with old contents anyway),
// so a fresh 268 MB buffer is first touched by the stores that fill it, not by a memset.
// (Advising such buffers as transparent huge pages was measured: steady-state time did not
// move beyond noise, and the first call took twice as long, the kernel compacting memory to
// find 2 MiB pages.)
template <class T>
struct ScratchAlloc {
  using value_type = T;
  ScratchAlloc() = default;
  template <class U>
  ScratchAlloc(const ScratchAlloc<U>&) noexcept {}
  T* allocate(size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
  template <class U>
  void construct(U* p) noexcept {  // default-initialize: no zero fill
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
  template <class U>
  bool operator==(const ScratchAlloc<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const ScratchAlloc<U>&) const noexcept { return false; }
};
using Scratch = std::vector<float, ScratchAlloc<float>>;

std::mutex pool_mu;
std::vector<Scratch> pool;

Scratch take_scratch() {
  std::lock_guard<std::mutex> lk(pool_mu);
  if (pool.empty()) return {};
  Scratch v = std::move(pool.back());
  pool.pop_back();
  return v;
}

void keep_scratch(Scratch&& v, size_t cap) {
  std::lock_guard<std::mutex> lk(pool_mu);
  size_t held = 0;
  for (const auto& b : pool) held += b.capacity() * sizeof(float);
  if (v.capacity() && held + v.capacity() * sizeof(float) <= cap) pool.push_back(std::move(v));
}

// Batch sizes (genes) for short chunk rows, see read_normalize.
constexpr int64_t kRunBatchGenes = 64;
constexpr int64_t kGatherBatchGenes = 256;

// Gathers columns local[0..g) of a gene-major chunk (row stride cs) for `rows` genes into
// sample-major rows: dst[k * dst_stride + gl] = src[gl * cs + local[k]]. Tiled by genes so
// both sides stay in cache.
void gather_columns(const uint32_t* src, int64_t cs, const int64_t* local, int64_t g,
                    int64_t rows, uint32_t* dst, int64_t dst_stride) {
  constexpr int64_t kTile = 64;
  for (int64_t gb = 0; gb < rows; gb += kTile) {
    const int64_t ge = std::min(rows, gb + kTile);
    for (int64_t k = 0; k < g; ++k) {
      const uint32_t* s = src + local[k];
      uint32_t* d = dst + k * dst_stride;
      for (int64_t gl = gb; gl < ge; ++gl) d[gl] = s[gl * cs];
    }
  }
}

// The chunk rows of one task, decoded in order, with help from workers that have no task left.
// A task reads its chunk column row by row, and the rows of one sample must be accumulated in
// gene order (that order fixes the bits of the denominators). When a worker has no task left
// (one wide chunk column; a few random samples of a small file; the tail of many tasks), it
// decodes rows ahead of a running task's owner into a ring of slots, and the owner still
// accumulates every row itself, in order: the same operations as one thread, so the same bits.
// Rows are claimed in order from `next`; the owner decodes a row itself when no helper has
// claimed it yet, and while it waits for a row a helper is decoding, it decodes the next free
// one into the ring.
class RowPipe {
 public:
  RowPipe(const ChunkedMatrix& m, const File& f, const Task& t, int depth)
      : m_(m), f_(f), t_(t), depth_(depth) {}

  // Row r (rows are asked for in order 0, 1, ...), decoded into `own` unless a helper holds
  // it. Returns nullptr for an unwritten chunk. Call done(r) once the row is no longer read.
  const uint32_t* get(int64_t r, ChunkBuffers& own) {
    std::unique_lock<std::mutex> lk(mu_);
    const int s = static_cast<int>(r % depth_);
    for (;;) {
      if (next_ == r) {  // nobody has claimed it: decode it here
        ++next_;
        lk.unlock();
        return load_chunk(m_, f_, own, r, t_.col, t_.slot);
      }
      if (err_) std::rethrow_exception(err_);
      if (row_in_[s] == r) return ptr_[s];
      // a helper is decoding row r: rather than wait, decode the next free row for it
      if (next_ < m_.grid_rows && next_ - consumed_ < depth_) {
        decode_next(lk);
        continue;
      }
      cv_.wait(lk, [&] {
        return row_in_[s] == r || err_ || (next_ < m_.grid_rows && next_ - consumed_ < depth_);
      });
    }
  }

  void done(int64_t r) {
    std::lock_guard<std::mutex> lk(mu_);
    consumed_ = r + 1;
    const int s = static_cast<int>(r % depth_);
    if (row_in_.size() && row_in_[s] == r) row_in_[s] = -1;
    if (helpers_) cv_.notify_all();
  }

  // Rows no one has claimed yet (0 once the owner has finished).
  int64_t unclaimed() {
    std::lock_guard<std::mutex> lk(mu_);
    return open_ ? m_.grid_rows - next_ : 0;
  }

  // A worker with no task left: decodes rows ahead of the owner until none are left to claim
  // (or the task ended, or some worker failed: `stop`).
  void help(const std::atomic<bool>& stop) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!open_) return;
    if (slots_ == nullptr) {
      slots_.reset(new ChunkBuffers[depth_]);
      row_in_.assign(depth_, -1);
      ptr_.assign(depth_, nullptr);
    }
    ++helpers_;
    for (;;) {
      // row r goes to slot r % depth, free once row r - depth has been consumed
      cv_.wait(lk, [&] {
        return !open_ || err_ || stop.load() || next_ >= m_.grid_rows || next_ - consumed_ < depth_;
      });
      if (!open_ || err_ || stop.load() || next_ >= m_.grid_rows) break;
      decode_next(lk);
    }
    --helpers_;
    cv_.notify_all();
  }

  // The owner is done (or failed): no more claims; waits for helpers to leave the slots.
  void close() {
    std::unique_lock<std::mutex> lk(mu_);
    open_ = false;
    cv_.notify_all();
    cv_.wait(lk, [&] { return helpers_ == 0; });
    slots_.reset();  // the ring's buffers go with the task
  }

 private:
  // Claims row next_ (its slot is free), decodes it unlocked and publishes it; `lk` is held
  // on entry and on return. A failure is kept for everyone waiting on the pipe.
  void decode_next(std::unique_lock<std::mutex>& lk) {
    const int64_t r = next_++;
    const int s = static_cast<int>(r % depth_);
    lk.unlock();
    const uint32_t* p = nullptr;
    std::exception_ptr e;
    try {
      p = load_chunk(m_, f_, slots_[s], r, t_.col, t_.slot);
    } catch (...) {
      e = std::current_exception();
    }
    lk.lock();
    if (e) {
      if (!err_) err_ = e;
    } else {
      ptr_[s] = p;
      row_in_[s] = r;
    }
    cv_.notify_all();
  }

  const ChunkedMatrix& m_;
  const File& f_;
  const Task& t_;
  const int depth_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t next_ = 0, consumed_ = 0;
  bool open_ = true;
  int helpers_ = 0;
  std::unique_ptr<ChunkBuffers[]> slots_;
  std::vector<int64_t> row_in_;  // the row each slot holds, decoded; -1 = none
  std::vector<const uint32_t*> ptr_;
  std::exception_ptr err_;
};

}  // namespace

void release_scratch() {
  std::lock_guard<std::mutex> lk(pool_mu);
  pool.clear();
  pool.shrink_to_fit();
}

int64_t scratch_pool_bytes() {
  std::lock_guard<std::mutex> lk(pool_mu);
  size_t held = 0;
  for (const auto& b : pool) held += b.capacity() * sizeof(float);
  return static_cast<int64_t>(held);
}

int64_t ChunkedMatrix::slot(int64_t c) const {
  if (!cols) return (c >= 0 && c < grid_cols) ? c : -1;
  const int64_t* p = std::lower_bound(cols, cols + n_cols, c);
  return (p != cols + n_cols && *p == c) ? p - cols : -1;
}

void read_normalize(const ChunkedMatrix& m, const int64_t* samples, int64_t n,
                    const NormSpec& spec, const ReadOptions& opt) {
  check_matrix(m);
  if (spec.n_src != m.n_genes) throw std::invalid_argument("gene_map length != genes in file");
  NormPlan plan(spec);
  const bool values = plan.needs_values();
  // per-sample C/L values; rows padded to whole 64-byte lines (and the buffer aligned below),
  // so that the gene-major path can write them with streaming stores (scatter_vals_avx2)
  const int64_t row_len = (std::max<int64_t>(plan.n_mapped(), 1) + 15) & ~int64_t{15};
  int64_t max_group = int64_t{1} << 40;
  if (values) max_group = std::max<int64_t>(1, opt.max_scratch_bytes / (4 * row_len));
  std::vector<Task> tasks = plan_tasks(m, samples, n, max_group);
  // More threads than tasks is useful: a worker with no task left decodes chunk rows for the
  // tasks still running (RowPipe): one wide chunk column, a few random samples, the last tasks
  // of a call whose task count is not a multiple of the thread count.
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  const int threads = static_cast<int>(std::min<int64_t>(
      resolve_threads(opt.threads), std::max<int64_t>(1, n_tasks * m.grid_rows)));
  File f(m.path);
  std::vector<std::unique_ptr<RowPipe>> pipes;
  if (threads > 1 && m.grid_rows > 2) {
    // ring slots per task: two per thread expected to help it (all of them for one task,
    // about one at the tail of many), so that the ring's buffers stay small when tasks abound
    const int64_t running = std::min<int64_t>(n_tasks, threads);
    const int64_t per_task = (threads + running - 1) / running;
    const int depth = static_cast<int>(std::clamp<int64_t>(2 * per_task + 2, 4, 32));
    for (const Task& t : tasks) pipes.emplace_back(new RowPipe(m, f, t, depth));
  }
  std::vector<ChunkBuffers> bufs(threads);
  std::vector<Scratch> scr(threads);
  std::vector<std::vector<float>> rowbuf(threads);
  if (values)
    for (auto& b : scr) b = take_scratch();
  struct Keep {  // hands the value buffers back to the pool, also when a worker threw
    std::vector<Scratch>& s;
    ~Keep() {
      size_t call_bytes = 0;
      for (const auto& b : s) call_bytes += b.capacity() * sizeof(float);
      const size_t cap = pool_cap(call_bytes);
      for (auto& b : s) keep_scratch(std::move(b), cap);
    }
  } keep{scr};
  std::vector<std::vector<uint32_t>> tbuf(threads);
  if (values)
    for (auto& rb : rowbuf) rb.assign(spec.n_out, 0.0f);
  std::vector<GroupAcc> groups(threads);
  // set_gene_major(false) forces the transposing path (tests compare the two bit for bit)
  const bool gene_major =
      !m.transposed && spec.mode != Mode::kCounts && switches::gene_major.load();
  // Chunk rows shorter than this (1 × 1000, 16 × 1000 chunks) are normalized in batches of
  // consecutive chunk rows: their genes are gathered into one block first, so the per-call
  // costs of accumulate / accumulate_rows (lookups, a write into every sample's value row, the
  // 8 × 8 transposition) are paid per batch, not per chunk row of one or a few genes. Every
  // sample still receives its genes in gene order, and the denominator lanes are chosen by
  // absolute gene index, so any batching gives the same bits. Gene-major runs copy whole
  // chunk-row slices (g samples wide) and want a block that stays in L2; the transposing path
  // writes only the requested samples.
  auto run_task = [&](int wid, int64_t ti) {
    const Task& t = tasks[ti];
    RowPipe* pipe = pipes.empty() ? nullptr : pipes[ti].get();
    struct Close {  // no more helpers on this task's rows, also when it threw
      RowPipe* p;
      ~Close() {
        if (p) p->close();
      }
    } close{pipe};
    auto get_row = [&](int64_t r) {
      return pipe ? pipe->get(r, bufs[wid]) : load_chunk(m, f, bufs[wid], r, t.col, t.slot);
    };
    auto row_done = [&](int64_t r) {
      if (pipe) pipe->done(r);
    };
    const int64_t g = static_cast<int64_t>(t.rows.size());
    std::vector<SampleAcc> accs(g);
    std::vector<int64_t> local(g);
    for (int64_t k = 0; k < g; ++k) local[k] = samples[t.rows[k]] - t.col * m.chunk_samples;
    if (values && scr[wid].size() < static_cast<size_t>(g * row_len + 16))
      scr[wid].resize(static_cast<size_t>(g * row_len + 16));
    float* vals0 = nullptr;
    if (values) {
      const uintptr_t p = reinterpret_cast<uintptr_t>(scr[wid].data());
      vals0 = scr[wid].data() + ((64 - p % 64) % 64) / sizeof(float);  // 64-byte aligned
    }
    for (int64_t k = 0; k < g; ++k)
      begin_sample(plan, accs[k], t.rows[k], values ? vals0 + k * row_len : nullptr);
    // Gene-major chunks whose requested samples are one contiguous run (the usual case: whole
    // chunk columns) of at least 8 (one SIMD step; shorter runs are faster transposed):
    // accumulate straight from the chunk's gene rows, across samples.
    bool run = gene_major && g >= 8;
    for (int64_t k = 1; run && k < g; ++k) run = local[k] == local[0] + k;
    GroupAcc& ga = groups[wid];
    if (run) ga.reset(g);
    const int64_t cs = m.chunk_samples, cg = m.chunk_genes;
    const int64_t batch_genes = run ? kRunBatchGenes : kGatherBatchGenes;
    const int64_t batch_rows = cg >= batch_genes ? 1 : (batch_genes + cg - 1) / cg;
    const int64_t nb = batch_rows * cg;  // genes a batch holds at most
    // The batch: genes [b0, b1) gathered so far, in T. Run path: gene-major [nb × g] (row
    // stride g); else sample-major [g × nb] (sample k's genes at T + k * nb).
    std::vector<uint32_t>& T = tbuf[wid];
    int64_t b0 = 0, b1 = 0;
    auto flush = [&]() {
      if (b1 > b0) {
        if (run) {
          accumulate_rows(plan, ga, b0, b1, T.data(), g, vals0, row_len);
        } else {
          for (int64_t k = 0; k < g; ++k)
            accumulate(plan, accs[k], b0, b1, T.data() + k * nb, 1);
        }
      }
      b0 = b1;
    };
    for (int64_t r = 0; r < m.grid_rows; ++r) {
      const uint32_t* data = get_row(r);
      const int64_t g0 = r * cg, g1 = std::min(m.n_genes, g0 + cg);
      const int64_t rows_here = g1 - g0;
      if (!data) {  // unwritten chunk: all zeros (nothing to add, values set to 0)
        row_done(r);
        flush();
        for (int64_t k = 0; k < g; ++k) zero_piece(plan, accs[k], g0, g1);
        b0 = b1 = g1;
        continue;
      }
      if (batch_rows == 1) {  // long chunk rows: straight from the chunk, no copy
        if (run) {
          accumulate_rows(plan, ga, g0, g1, data + local[0], cs, vals0, row_len);
        } else if (m.transposed) {  // storage is sample-major already
          for (int64_t k = 0; k < g; ++k)
            accumulate(plan, accs[k], g0, g1, data + local[k] * cg, 1);
        } else {
          // Gene-major chunk: gather the requested columns into sample-major rows first
          // (tiled, so both sides stay in cache), then every sample is one contiguous pass.
          T.resize(static_cast<size_t>(g * rows_here));
          gather_columns(data, cs, local.data(), g, rows_here, T.data(), rows_here);
          for (int64_t k = 0; k < g; ++k)
            accumulate(plan, accs[k], g0, g1, T.data() + k * rows_here, 1);
        }
        row_done(r);
        b0 = b1 = g1;
        continue;
      }
      // short chunk rows: append genes [g0, g1) to the batch
      if (T.size() < static_cast<size_t>(g * nb)) T.resize(static_cast<size_t>(g * nb));
      const int64_t o = g0 - b0;  // position of g0 in the batch
      if (run) {
        for (int64_t gl = 0; gl < rows_here; ++gl)
          std::memcpy(T.data() + (o + gl) * g, data + gl * cs + local[0], sizeof(uint32_t) * g);
      } else if (m.transposed) {
        for (int64_t k = 0; k < g; ++k)
          std::memcpy(T.data() + k * nb + o, data + local[k] * cg,
                      sizeof(uint32_t) * rows_here);
      } else {
        gather_columns(data, cs, local.data(), g, rows_here, T.data() + o, nb);
      }
      row_done(r);  // copied into the batch
      b1 = g1;
      if (b1 - b0 + cg > nb) flush();  // the next chunk row would not fit
    }
    flush();
    if (run) flush_group(ga, accs.data());
    for (int64_t k = 0; k < g; ++k)
      finish_sample(plan, accs[k], t.rows[k], values ? rowbuf[wid].data() : nullptr);
  };
  if (pipes.empty()) {
    parallel_for(n_tasks, threads, run_task);
    return;
  }
  // Each worker takes tasks while there are any, then helps the unfinished ones decode rows.
  std::atomic<int64_t> next_task{0};
  std::atomic<bool> stop{false};
  parallel_for(threads, threads, [&](int wid, int64_t) {
    try {
      for (int64_t ti; !stop.load() && (ti = next_task.fetch_add(1)) < n_tasks;) run_task(wid, ti);
    } catch (...) {
      stop = true;
      throw;
    }
    while (!stop.load()) {
      RowPipe* best = nullptr;
      int64_t most = 1;  // a row left is not worth a helper
      for (auto& p : pipes) {
        const int64_t u = p->unclaimed();
        if (u > most) most = u, best = p.get();
      }
      if (!best) break;
      best->help(stop);
    }
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
      if (load_chunk(m, f, bufs[wid], r, tasks[ti].col, tasks[ti].slot))
        bytes[wid] += m.chunk_bytes();
  });
  int64_t total = 0;
  for (int64_t b : bytes) total += b;
  return total;
}

}  // namespace bulkformer
