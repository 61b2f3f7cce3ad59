// Multithreaded reader of chunked HDF5 datasets from raw chunk bytes: the chunk index (file
// offsets, sizes, filter masks) comes from h5py's DatasetID.chunk_iter, so no HDF5 library is
// linked here. Threads pread raw chunks, undo the filter pipeline (deflate, shuffle), and feed
// the requested samples' counts to the fused normalizer (normalize.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "normalize.h"

namespace bulkformer {

// A genes x samples uint32 little-endian dataset, chunked. In "transposed" files the storage
// order is samples x genes (old ARCHS4 layout); everything below is in logical genes x samples.
struct ChunkedMatrix {
  std::string path;
  int64_t n_genes = 0, n_samples = 0;
  int64_t chunk_genes = 0, chunk_samples = 0;  // chunk extent along each logical axis
  bool transposed = false;
  std::vector<int> filters;                    // pipeline in write order (kFilterShuffle, ...)
  int64_t grid_rows = 0, grid_cols = 0;        // chunks along genes, samples
  const int64_t* offsets = nullptr;            // [grid_rows, grid_cols] byte offset, -1 = absent
  const int64_t* sizes = nullptr;              // [grid_rows, grid_cols] stored bytes
  const uint32_t* masks = nullptr;             // [grid_rows, grid_cols] filter masks
  // A partial index: the arrays above hold only the chunk columns cols[0..n_cols) (sorted,
  // unique), as [grid_rows, n_cols]; null = all grid_cols columns.
  const int64_t* cols = nullptr;
  int64_t n_cols = 0;

  int64_t chunk_bytes() const { return chunk_genes * chunk_samples * 4; }
  int64_t stored_cols() const { return cols ? n_cols : grid_cols; }
  // Position of chunk column c in the arrays, -1 when the index does not hold it.
  int64_t slot(int64_t c) const;
};

struct ReadOptions {
  int threads = 0;                          // 0 = all cores
  int64_t max_scratch_bytes = 288 << 20;    // per thread; bounds memory for wide chunks
};

// Normalizes samples[0..n) (logical column indices) into spec's output rows 0..n.
void read_normalize(const ChunkedMatrix& m, const int64_t* samples, int64_t n,
                    const NormSpec& spec, const ReadOptions& opt);

// Frees the per-sample value buffers read_normalize keeps between calls (up to 512 MiB, or
// the buffers of the last call's threads if more, at most 1/8 of physical memory).
void release_scratch();
// Bytes of value buffers held between calls.
int64_t scratch_pool_bytes();

// Inflate ceiling: reads and decodes every chunk the request touches, once, doing nothing else.
// Returns the number of decoded bytes.
int64_t read_inflate_only(const ChunkedMatrix& m, const int64_t* samples, int64_t n,
                          const ReadOptions& opt);

}  // namespace bulkformer
