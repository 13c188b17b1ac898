// pybind11 bindings of the contingency table (csrc/core/contingency.hpp).
// Python (spoco.metrics) validates and normalises the label images; the checks
// here only guard memory safety.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <tuple>

#include "core/contingency.hpp"

namespace py = pybind11;

namespace {

using labels_t = py::array_t<int64_t, py::array::c_style>;

std::tuple<labels_t, labels_t, labels_t> contingency_table(const labels_t& a, const labels_t& b, int threads) {
    if (a.ndim() != 1 || b.ndim() != 1 || a.shape(0) != b.shape(0))
        throw std::invalid_argument("contingency_table: a and b must be 1-D arrays of the same length");
    const int64_t* pa = a.data();
    const int64_t* pb = b.data();
    const std::size_t n = static_cast<std::size_t>(a.shape(0));
    std::vector<spoco::PairCount> table;
    {
        py::gil_scoped_release release;
        table = spoco::contingency_table(pa, pb, n, threads);
    }
    const auto k = static_cast<py::ssize_t>(table.size());
    labels_t ids_a(k), ids_b(k), counts(k);
    int64_t* oa = ids_a.mutable_data();
    int64_t* ob = ids_b.mutable_data();
    int64_t* on = counts.mutable_data();
    for (py::ssize_t i = 0; i < k; ++i) {
        oa[i] = table[i].a;
        ob[i] = table[i].b;
        on[i] = table[i].n;
    }
    return {ids_a, ids_b, counts};
}

}  // namespace

void register_metrics(py::module_& m) {
    m.def("contingency_table", &contingency_table, py::arg("a"), py::arg("b"), py::arg("threads"),
          "Pairs (a_ids, b_ids, counts) of labels co-occurring at the same index, sorted by (a, b).");
}
