// bulkformer._C — pybind11 bindings only; the logic lives in the other csrc/ files.
// Every entry point validates shapes/dtypes/contiguity, then releases the GIL for the whole call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include "h5index.h"
#include "h5reader.h"
#include "inflate.h"
#include "half.h"
#include "normalize.h"
#include "switches.h"

namespace py = pybind11;
using namespace bulkformer;

#define BF_CHECK(cond, msg)                               \
  do {                                                    \
    if (!(cond)) throw std::invalid_argument(std::string(msg)); \
  } while (0)

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

template <typename T>
const T* need(const py::object& o, const char* name, int64_t n) {
  BF_CHECK(!o.is_none(), std::string(name) + " is required");
  auto a = py::cast<py::array>(o);
  BF_CHECK(a.dtype().is(py::dtype::of<T>()), std::string(name) + " has the wrong dtype");
  BF_CHECK(a.flags() & py::array::c_style, std::string(name) + " must be C-contiguous");
  BF_CHECK(a.size() == n, std::string(name) + " has " + std::to_string(a.size()) +
                              " elements, expected " + std::to_string(n));
  return static_cast<const T*>(a.data());
}

template <typename T>
T* need_mut(const py::object& o, const char* name, int64_t n) {
  auto p = const_cast<T*>(need<T>(o, name, n));
  BF_CHECK(py::cast<py::array>(o).writeable(), std::string(name) + " must be writeable");
  return p;
}

template <typename T>
const T* maybe(const py::object& o, const char* name, int64_t n) {
  return o.is_none() ? nullptr : need<T>(o, name, n);
}

// Fills a NormSpec from the common keyword arguments. Arrays stay alive in the caller's frame.
NormSpec make_spec(int64_t n_rows, const py::object& gene_map, const py::object& lengths,
                   int64_t n_src, int64_t n_out, int mode, const py::object& out,
                   const py::object& nonzero, const py::object& total) {
  NormSpec s;
  s.n_src = n_src;
  s.n_out = n_out;
  BF_CHECK(mode >= 0 && mode <= 2, "mode must be 0 (counts), 1 (log1p_tpm) or 2 (tpm given)");
  s.mode = static_cast<Mode>(mode);
  s.gene_map = need<int64_t>(gene_map, "gene_map", n_src);
  s.lengths = need<double>(lengths, "lengths", n_src);
  for (int64_t j = 0; j < n_src; ++j)
    BF_CHECK(s.gene_map[j] >= -1 && s.gene_map[j] < n_out, "gene_map values must be in [-1, n_out)");
  if (!out.is_none()) {
    auto a = py::cast<py::array>(out);
    BF_CHECK(a.ndim() == 2 && a.shape(0) == n_rows && a.shape(1) == n_out,
             "out must have shape (n_samples, n_out) = (" + std::to_string(n_rows) + ", " +
                 std::to_string(n_out) + ")");
    BF_CHECK(a.writeable(), "out must be writeable");
    BF_CHECK(a.strides(1) == a.itemsize(), "out rows must be contiguous");
    BF_CHECK(a.strides(0) % a.itemsize() == 0, "out row stride must be a whole element count");
    if (a.dtype().is(py::dtype::of<float>())) {
      s.out_type = OutType::kF32;
    } else if (a.dtype().is(py::dtype("float16"))) {
      s.out_type = OutType::kF16;
      BF_CHECK(s.mode != Mode::kCounts, "counts cannot be written as float16");
    } else if (a.dtype().is(py::dtype::of<uint32_t>())) {
      s.out_type = OutType::kU32;
      BF_CHECK(s.mode == Mode::kCounts, "uint32 output is only for mode=counts");
    } else {
      throw std::invalid_argument("out must be float32, float16 or uint32");
    }
    s.out = a.mutable_data();
    s.out_row_stride = a.strides(0) / a.itemsize();
  }
  s.nonzero = nonzero.is_none() ? nullptr : need_mut<int64_t>(nonzero, "nonzero", n_rows);
  s.total = total.is_none() ? nullptr : need_mut<double>(total, "total", n_rows);
  return s;
}

ChunkedMatrix make_matrix(const std::string& path, int64_t n_genes, int64_t n_samples,
                          int64_t chunk_genes, int64_t chunk_samples, bool transposed,
                          const std::vector<int>& filters, const py::object& offsets,
                          const py::object& sizes, const py::object& masks,
                          const py::object& cols) {
  ChunkedMatrix m;
  m.path = path;
  m.n_genes = n_genes;
  m.n_samples = n_samples;
  m.chunk_genes = chunk_genes;
  m.chunk_samples = chunk_samples;
  m.transposed = transposed;
  m.filters = filters;
  BF_CHECK(chunk_genes > 0 && chunk_samples > 0, "chunk shape must be positive");
  m.grid_rows = (n_genes + chunk_genes - 1) / chunk_genes;
  m.grid_cols = (n_samples + chunk_samples - 1) / chunk_samples;
  if (!cols.is_none()) {
    m.n_cols = py::cast<py::array>(cols).size();
    m.cols = need<int64_t>(cols, "cols", m.n_cols);
  }
  const int64_t n = m.grid_rows * m.stored_cols();
  m.offsets = need<int64_t>(offsets, "offsets", n);
  m.sizes = need<int64_t>(sizes, "sizes", n);
  m.masks = need<uint32_t>(masks, "masks", n);
  return m;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bulkformer C++ engine: HDF5 raw-chunk reader and fused count normalizer";
  m.def("inflate_backend", &inflate_backend,
        "The inflate library in use: libdeflate, or zlib (always built; forced with "
        "set_force_zlib(True)).");
  // Runtime switches (bit-identical results; for tests and benchmarks). Each returns the
  // previous setting; the next engine call uses the new one.
  m.def(
      "set_simd", [](bool on) { return switches::simd.exchange(on); }, py::arg("enabled"),
      "AVX2 loops where the CPU has them (True, default) or the portable loops.");
  m.def(
      "set_gene_major", [](bool on) { return switches::gene_major.exchange(on); },
      py::arg("enabled"),
      "Gene-major accumulation of wide chunk rows (True, default) or always transpose chunks.");
  m.def(
      "set_force_zlib", [](bool on) { return switches::force_zlib.exchange(on); },
      py::arg("enabled"), "Inflate with zlib even when libdeflate was linked (default False).");
#ifdef BULKFORMER_HAVE_LIBDEFLATE
  m.attr("have_libdeflate") = true;
#else
  m.attr("have_libdeflate") = false;
#endif

  m.def(
      "read_normalize",
      [](const std::string& path, int64_t n_genes, int64_t n_samples, int64_t chunk_genes,
         int64_t chunk_samples, bool transposed, const std::vector<int>& filters,
         py::object offsets, py::object sizes, py::object masks, py::object samples,
         py::object gene_map, py::object lengths, int64_t n_out, int mode, py::object out,
         py::object nonzero, py::object total, int threads, int64_t max_scratch_bytes,
         py::object cols) {
        ChunkedMatrix mat = make_matrix(path, n_genes, n_samples, chunk_genes, chunk_samples,
                                        transposed, filters, offsets, sizes, masks, cols);
        const int64_t n = py::cast<py::array>(samples).size();
        const int64_t* s = need<int64_t>(samples, "samples", n);
        NormSpec spec = make_spec(n, gene_map, lengths, n_genes, n_out, mode, out, nonzero, total);
        ReadOptions opt;
        opt.threads = threads;
        opt.max_scratch_bytes = max_scratch_bytes;
        py::gil_scoped_release release;
        read_normalize(mat, s, n, spec, opt);
      },
      py::arg("path"), py::arg("n_genes"), py::arg("n_samples"), py::arg("chunk_genes"),
      py::arg("chunk_samples"), py::arg("transposed"), py::arg("filters"), py::arg("offsets"),
      py::arg("sizes"), py::arg("masks"), py::arg("samples"), py::arg("gene_map"),
      py::arg("lengths"), py::arg("n_out"), py::arg("mode"), py::arg("out") = py::none(),
      py::arg("nonzero") = py::none(), py::arg("total") = py::none(), py::arg("threads") = 0,
      py::arg("max_scratch_bytes") = int64_t{288} << 20, py::arg("cols") = py::none(),
      "Read samples from a chunked genes x samples uint32 HDF5 dataset and normalize them.");

  m.def(
      "inflate_only",
      [](const std::string& path, int64_t n_genes, int64_t n_samples, int64_t chunk_genes,
         int64_t chunk_samples, bool transposed, const std::vector<int>& filters,
         py::object offsets, py::object sizes, py::object masks, py::object samples,
         int threads, py::object cols) {
        ChunkedMatrix mat = make_matrix(path, n_genes, n_samples, chunk_genes, chunk_samples,
                                        transposed, filters, offsets, sizes, masks, cols);
        const int64_t n = py::cast<py::array>(samples).size();
        const int64_t* s = need<int64_t>(samples, "samples", n);
        ReadOptions opt;
        opt.threads = threads;
        py::gil_scoped_release release;
        return read_inflate_only(mat, s, n, opt);
      },
      py::arg("path"), py::arg("n_genes"), py::arg("n_samples"), py::arg("chunk_genes"),
      py::arg("chunk_samples"), py::arg("transposed"), py::arg("filters"), py::arg("offsets"),
      py::arg("sizes"), py::arg("masks"), py::arg("samples"), py::arg("threads") = 0,
      py::arg("cols") = py::none(),
      "Decode every chunk a request touches and nothing else (the inflate ceiling).");

  m.def("release_scratch", &release_scratch,
        "Free the per-sample value buffers read_normalize keeps between calls (up to 512 MiB, "
        "or one per thread of the last call if more; at most 1/8 of physical memory).");
  m.def("scratch_pool_bytes", &scratch_pool_bytes,
        "Bytes of per-sample value buffers read_normalize holds between calls.");

  m.def(
      "chunk_btree",
      [](const std::string& path, uint64_t header_addr, std::vector<int64_t> dims,
         std::vector<int64_t> chunk, int64_t elem_size, py::object want) -> py::object {
        BF_CHECK(dims.size() == 2 && chunk.size() == 2, "dims and chunk must have 2 entries");
        BF_CHECK(chunk[0] > 0 && chunk[1] > 0 && dims[0] >= 0 && dims[1] >= 0,
                 "bad dataset or chunk shape");
        const int64_t* w = nullptr;
        int64_t nw = 0;
        if (!want.is_none()) {
          nw = py::cast<py::array>(want).size();
          w = need<int64_t>(want, "want", nw);
        }
        ChunkRecords rec;
        std::string why;
        bool ok;
        {
          py::gil_scoped_release release;
          ok = read_chunk_btree(path, header_addr, dims.data(), chunk.data(), elem_size, w, nw,
                                &rec, &why);
        }
        if (!ok) return py::str(why);
        auto arr = [](const auto& v) {
          using T = typename std::decay_t<decltype(v)>::value_type;
          py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
          if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
          return a;
        };
        return py::make_tuple(arr(rec.lin), arr(rec.addr), arr(rec.size), arr(rec.mask),
                              rec.nodes_read);
      },
      py::arg("path"), py::arg("header_addr"), py::arg("dims"), py::arg("chunk"),
      py::arg("elem_size"), py::arg("want") = py::none(),
      "Chunk index of a 2-D dataset read from its version-1 chunk B-tree: (lin, addr, size,\n"
      "mask, nodes_read), lin = i0 * grid1 + i1 in storage order, ascending; only the chunks\n"
      "whose lin is in `want` (sorted) when given. A str (the reason) when the layout is not\n"
      "one this reader handles (the caller then uses h5py's chunk_iter).");

  m.def(
      "normalize_dense",
      [](py::array counts, py::object gene_map, py::object lengths, int64_t n_out, int mode,
         py::object out, py::object nonzero, py::object total, int threads) {
        BF_CHECK(counts.ndim() == 2, "counts must be 2-D (samples x genes)");
        BF_CHECK(counts.flags() & py::array::c_style, "counts must be C-contiguous");
        const int64_t n = counts.shape(0), j = counts.shape(1);
        NormSpec spec = make_spec(n, gene_map, lengths, j, n_out, mode, out, nonzero, total);
        if (counts.dtype().is(py::dtype::of<uint32_t>())) {
          const auto* p = static_cast<const uint32_t*>(counts.data());
          py::gil_scoped_release release;
          normalize_dense<uint32_t>(spec, p, n, j, threads);
        } else if (counts.dtype().is(py::dtype::of<double>())) {
          const auto* p = static_cast<const double*>(counts.data());
          py::gil_scoped_release release;
          normalize_dense<double>(spec, p, n, j, threads);
        } else {
          throw std::invalid_argument("counts must be uint32 or float64");
        }
      },
      py::arg("counts"), py::arg("gene_map"), py::arg("lengths"), py::arg("n_out"),
      py::arg("mode"), py::arg("out") = py::none(), py::arg("nonzero") = py::none(),
      py::arg("total") = py::none(), py::arg("threads") = 0,
      "Normalize numbers already in memory (same arithmetic as read_normalize).");

  m.def(
      "block_moments",
      [](carray<float> x, py::object rows) {
        BF_CHECK(x.ndim() == 2, "values must be 2-D (rows x genes)");
        const int64_t n = x.shape(0), g = x.shape(1);
        const uint8_t* r = maybe<uint8_t>(rows, "rows", n);
        py::array_t<double> mean(g), m2(g);
        const float* p = x.data();
        double* pm = mean.mutable_data();
        double* p2 = m2.mutable_data();
        int64_t bad;
        {
          py::gil_scoped_release release;
          bad = block_moments(p, n, g, r, pm, p2);
        }
        return py::make_tuple(mean, m2, bad);
      },
      py::arg("values"), py::arg("rows") = py::none(),
      "(mean, m2, bad_row): per-column mean and sum of squared deviations (float64) of the\n"
      "selected rows of a float32 block; bad_row is the first row (of all) holding NaN/inf, in\n"
      "which case the moments are not computed, else -1.");

  m.def(
      "standardize",
      [](py::object values, py::object shift, py::object scale, py::object out, py::object src,
         int threads) {
        auto v = py::cast<py::array>(values);
        BF_CHECK(v.ndim() == 2, "values must be 2-D (rows x genes)");
        const int64_t n = v.shape(0), g = v.shape(1);
        auto sh = py::cast<py::array>(shift);
        BF_CHECK(sh.ndim() == 2 && sh.shape(1) == g, "shift must be (n_sources, genes)");
        const int64_t n_src = sh.shape(0);
        const float* pv = need<float>(values, "values", n * g);
        const float* ps = need<float>(shift, "shift", n_src * g);
        const float* pk = need<float>(scale, "scale", n_src * g);
        auto o = py::cast<py::array>(out);
        BF_CHECK(o.ndim() == 2 && o.shape(0) == n && o.shape(1) == g,
                 "out must have the shape of values");
        void* po = nullptr;
        OutType ot = OutType::kF16;
        if (o.dtype().is(py::dtype("float16"))) {
          po = need_mut<uint16_t>(out.attr("view")(py::dtype::of<uint16_t>()), "out", n * g);
        } else if (o.dtype().is(py::dtype::of<float>())) {
          po = need_mut<float>(out, "out", n * g);
          ot = OutType::kF32;
        } else {
          throw std::invalid_argument("out must be float16 or float32");
        }
        BF_CHECK(po != static_cast<const void*>(pv), "out must not be values");
        const int64_t* pr = maybe<int64_t>(src, "src", n);
        BF_CHECK(pr != nullptr || n_src == 1, "src is required with more than one source row");
        {
          py::gil_scoped_release release;
          standardize(pv, n, g, pr, ps, pk, n_src, po, ot, threads);
        }
      },
      py::arg("values"), py::arg("shift"), py::arg("scale"), py::arg("out"),
      py::arg("src") = py::none(), py::arg("threads") = 0,
      "out[r] = clip((values[r] - shift[src[r]]) * scale[src[r]], +-65504) as float16 or float32\n"
      "(out's dtype), computed in float32 (bit-identical to numpy), rows split across threads\n"
      "(0 = all cores).");

  m.def(
      "float_to_half",
      [](carray<float> x) {
        py::array_t<uint16_t> out(x.size());
        auto* o = out.mutable_data();
        const float* p = x.data();
        for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = float_to_half(p[i]);
        return out;
      },
      "float32 -> float16 bits (round to nearest even), for tests.");
}
