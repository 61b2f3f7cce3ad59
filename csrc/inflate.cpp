#include "inflate.h"

#include <zlib.h>

#include <cstring>

#include "switches.h"

#ifdef BULKFORMER_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

namespace bulkformer {

Inflater::Inflater() {
#ifdef BULKFORMER_HAVE_LIBDEFLATE
  if (!switches::force_zlib.load()) impl_ = libdeflate_alloc_decompressor();
#endif
}

Inflater::~Inflater() {
#ifdef BULKFORMER_HAVE_LIBDEFLATE
  if (impl_) libdeflate_free_decompressor(static_cast<libdeflate_decompressor*>(impl_));
#endif
  if (zs_) {
    inflateEnd(static_cast<z_stream*>(zs_));
    delete static_cast<z_stream*>(zs_);
  }
}

std::string Inflater::inflate(const uint8_t* in, size_t in_size, uint8_t* out, size_t out_size) {
#ifdef BULKFORMER_HAVE_LIBDEFLATE
  if (impl_) {
    size_t actual = 0;
    auto r = libdeflate_zlib_decompress(static_cast<libdeflate_decompressor*>(impl_), in,
                                        in_size, out, out_size, &actual);
    if (r == LIBDEFLATE_SUCCESS && actual == out_size) return {};
    if (r == LIBDEFLATE_SUCCESS || r == LIBDEFLATE_SHORT_OUTPUT)
      return "inflated to " + std::to_string(actual) + " bytes, expected " +
             std::to_string(out_size);
    if (r != LIBDEFLATE_INSUFFICIENT_SPACE) return "corrupt deflate stream (libdeflate)";
    return "inflated data is larger than the chunk (" + std::to_string(out_size) + " bytes)";
  }
#endif
  // one stream per thread, reset between chunks (inflateInit allocates ~40 KB of state and
  // window per call; the reset keeps them)
  z_stream* zsp = static_cast<z_stream*>(zs_);
  if (!zsp) {
    zsp = new z_stream;
    std::memset(zsp, 0, sizeof(*zsp));
    if (inflateInit(zsp) != Z_OK) {
      delete zsp;
      return "zlib inflateInit failed";
    }
    zs_ = zsp;
  } else if (inflateReset(zsp) != Z_OK) {
    return "zlib inflateReset failed";
  }
  z_stream& zs = *zsp;
  zs.next_in = const_cast<Bytef*>(in);
  zs.avail_in = static_cast<uInt>(in_size);
  zs.next_out = out;
  zs.avail_out = static_cast<uInt>(out_size);
  int r = ::inflate(&zs, Z_FINISH);
  size_t produced = out_size - zs.avail_out;
  std::string err;
  if (r == Z_STREAM_END) {
    if (produced != out_size)
      err = "inflated to " + std::to_string(produced) + " bytes, expected " +
            std::to_string(out_size);
  } else if (r == Z_BUF_ERROR && zs.avail_out == 0) {
    err = "inflated data is larger than the chunk (" + std::to_string(out_size) + " bytes)";
  } else {
    err = std::string("corrupt deflate stream (zlib: ") + (zs.msg ? zs.msg : "truncated") + ")";
  }
  return err;
}

void unshuffle(const uint8_t* in, uint8_t* out, size_t nbytes, size_t elem_size) {
  if (elem_size <= 1) {
    std::memcpy(out, in, nbytes);
    return;
  }
  const size_t n = nbytes / elem_size;
  if (elem_size == 4) {
    const uint8_t* b0 = in;
    const uint8_t* b1 = in + n;
    const uint8_t* b2 = in + 2 * n;
    const uint8_t* b3 = in + 3 * n;
    for (size_t i = 0; i < n; ++i) {
      out[4 * i] = b0[i];
      out[4 * i + 1] = b1[i];
      out[4 * i + 2] = b2[i];
      out[4 * i + 3] = b3[i];
    }
  } else {
    for (size_t b = 0; b < elem_size; ++b) {
      const uint8_t* src = in + b * n;
      for (size_t i = 0; i < n; ++i) out[i * elem_size + b] = src[i];
    }
  }
  const size_t tail = nbytes - n * elem_size;
  if (tail) std::memcpy(out + n * elem_size, in + n * elem_size, tail);
}

const char* inflate_backend() {
#ifdef BULKFORMER_HAVE_LIBDEFLATE
  return switches::force_zlib.load() ? "zlib" : "libdeflate";
#else
  return "zlib";
#endif
}

}  // namespace bulkformer
