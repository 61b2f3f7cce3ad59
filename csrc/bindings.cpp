// bulkformer._C — pybind11 bindings only; the logic lives in the other csrc/ files.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "bulkformer C++ engine";
#ifdef BULKFORMER_HAVE_LIBDEFLATE
  m.attr("have_libdeflate") = true;
#else
  m.attr("have_libdeflate") = false;
#endif
}
