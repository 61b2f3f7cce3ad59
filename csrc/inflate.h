// Decoding of HDF5 chunk filters: deflate (zlib stream, as written by HDF5's H5Z_FILTER_DEFLATE)
// and byte shuffle (H5Z_FILTER_SHUFFLE). libdeflate is used for inflate when the build found it,
// zlib otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace bulkformer {

// HDF5 filter identifiers (H5Zpublic.h)
constexpr int kFilterDeflate = 1;
constexpr int kFilterShuffle = 2;

// Per-thread decompressor state (a libdeflate decompressor, or a zlib stream that is reset,
// not reallocated, between chunks).
class Inflater {
 public:
  Inflater();
  ~Inflater();
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;

  // Inflates the zlib stream `in` into exactly `out_size` bytes at `out`. Returns an empty
  // string on success, else a description of the failure (corrupt data, wrong size).
  std::string inflate(const uint8_t* in, size_t in_size, uint8_t* out, size_t out_size);

 private:
  void* impl_ = nullptr;
  void* zs_ = nullptr;  // z_stream, created on first use
};

// Undoes HDF5's byte shuffle for elements of `elem_size` bytes (trailing bytes that do not form
// a whole element are stored unshuffled, as HDF5 does).
void unshuffle(const uint8_t* in, uint8_t* out, size_t nbytes, size_t elem_size);

const char* inflate_backend();

}  // namespace bulkformer
