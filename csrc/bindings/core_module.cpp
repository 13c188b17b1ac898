// spoco._core: the torch-free C++ core. One register_* function per concept.
#include <pybind11/pybind11.h>

#include "core/common.hpp"

namespace py = pybind11;

void register_mws(py::module_& m);
void register_metrics(py::module_& m);
void register_loss(py::module_& m);

PYBIND11_MODULE(_core, m) {
    m.doc() = "spoco's torch-free C++ core (mutex watershed, affinities, metrics, loss kernels)";
#ifdef SPOCO_VERSION
    m.attr("__version__") = SPOCO_VERSION;
#endif
#ifdef SPOCO_HAVE_OPENMP
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
    m.def("max_threads", &spoco::max_threads, "Threads OpenMP uses by default (1 without OpenMP).");
    m.def("set_max_threads", &spoco::set_max_threads, py::arg("threads"),
          "Set the threads OpenMP uses by default (threads > 0; no-op without OpenMP).");
    register_mws(m);
    register_metrics(m);
    register_loss(m);
}
