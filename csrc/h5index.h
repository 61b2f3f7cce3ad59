// Chunk index of a chunked HDF5 dataset read straight from the file: the superblock, the
// dataset's object header (v1 or v2), its data layout message (version 3, chunked) and the
// version-1 B-tree of raw data chunks that HDF5 writes by default (h5py's libver "earliest",
// the layout of ARCHS4 files). No HDF5 library is linked. Other layouts (layout message
// version 4: fixed/extensible arrays, v2 B-trees; a user block; 4-byte offsets) are reported
// as unsupported, and the caller falls back to h5py's chunk_iter.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bulkformer {

// Chunks found, as parallel arrays. `lin` is the chunk's position in the chunk grid in storage
// order (i0 * grid1 + i1 for a 2-D dataset), ascending (B-tree order).
struct ChunkRecords {
  std::vector<int64_t> lin, addr, size;
  std::vector<uint32_t> mask;
  int64_t nodes_read = 0;  // B-tree nodes visited (for benchmarks)
};

// Reads the chunk B-tree of the 2-D dataset whose object header is at `header_addr` (from
// H5Oget_info). `dims`/`chunk` are the storage-order shape and chunk shape, `elem_size` the
// element size in bytes. With `want` (sorted, unique linear chunk ids, n_want of them), only the
// subtrees that can hold a wanted chunk are visited and only wanted chunks are returned; with
// want == nullptr every chunk is returned. Returns false and sets `why` when the file's layout
// is not one this reader handles; throws std::runtime_error when the structures are corrupt.
bool read_chunk_btree(const std::string& path, uint64_t header_addr, const int64_t* dims,
                      const int64_t* chunk, int64_t elem_size, const int64_t* want,
                      int64_t n_want, ChunkRecords* out, std::string* why);

}  // namespace bulkformer
