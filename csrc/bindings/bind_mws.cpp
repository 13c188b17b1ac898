// pybind11 bindings of the mutex watershed (csrc/core/mutex_watershed.hpp).
// Python (spoco.clustering.mws) validates and normalises arguments; the checks
// here only guard memory safety.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <optional>
#include <stdexcept>
#include <string>

#include "core/mutex_watershed.hpp"

namespace py = pybind11;

namespace {

template <class T>
using carray = py::array_t<T, py::array::c_style>;

void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

spoco::GridSpec make_spec(const std::array<int64_t, 3>& shape, const carray<int64_t>& offsets,
                          int n_attractive, const std::array<int64_t, 3>& strides,
                          bool randomize_strides, uint64_t seed,
                          const std::optional<carray<uint8_t>>& mask) {
    spoco::GridSpec g;
    g.shape = shape;
    for (int64_t s : shape) require(s >= 1, "shape entries must be >= 1");
    require(offsets.ndim() == 2 && offsets.shape(1) == 3, "offsets must have shape (C, 3)");
    const auto o = offsets.unchecked<2>();
    for (py::ssize_t c = 0; c < offsets.shape(0); ++c) {
        g.offsets.push_back({o(c, 0), o(c, 1), o(c, 2)});
        for (int k = 0; k < 3; ++k)
            require(o(c, k) >= -shape[k] && o(c, k) <= shape[k], "offsets must be clipped to [-size, size] per axis");
    }
    require(n_attractive >= 0 && n_attractive <= static_cast<int>(g.offsets.size()),
            "n_attractive must be in [0, C]");
    g.n_attractive = n_attractive;
    for (int64_t s : strides) require(s >= 1, "strides must be >= 1");
    g.strides = strides;
    g.randomize_strides = randomize_strides;
    g.seed = seed;
    if (mask) {
        require(mask->ndim() == 1 && static_cast<std::size_t>(mask->shape(0)) == g.n_pixels(),
                "mask must have one entry per pixel");
        g.mask = mask->data();
    }
    return g;
}

template <class T>
carray<int64_t> mws_grid(const carray<T>& aff, const std::array<int64_t, 3>& shape,
                         const carray<int64_t>& offsets, int n_attractive,
                         const std::array<int64_t, 3>& strides, bool randomize_strides, uint64_t seed,
                         const std::optional<carray<uint8_t>>& mask, int threads) {
    spoco::GridSpec g = make_spec(shape, offsets, n_attractive, strides, randomize_strides, seed, mask);
    require(aff.ndim() == 2 && static_cast<std::size_t>(aff.shape(0)) == g.n_channels() &&
                static_cast<std::size_t>(aff.shape(1)) == g.n_pixels(),
            "affinities must have shape (C, N)");
    carray<int64_t> labels(static_cast<py::ssize_t>(g.n_pixels()));
    const T* a = aff.data();
    int64_t* out = labels.mutable_data();
    {
        py::gil_scoped_release release;
        spoco::mutex_watershed_grid(a, g, out, threads);
    }
    return labels;
}

template <class T>
carray<int64_t> mws_embeddings(const carray<T>& emb, const std::array<int64_t, 3>& shape,
                               const carray<int64_t>& offsets, int n_attractive, double delta_d,
                               const std::array<int64_t, 3>& strides, bool randomize_strides, uint64_t seed,
                               const std::optional<carray<uint8_t>>& mask, int threads) {
    spoco::GridSpec g = make_spec(shape, offsets, n_attractive, strides, randomize_strides, seed, mask);
    require(emb.ndim() == 2 && static_cast<std::size_t>(emb.shape(1)) == g.n_pixels() && emb.shape(0) >= 1,
            "embeddings must have shape (D, N)");
    require(delta_d > 0, "delta_d must be > 0");
    carray<int64_t> labels(static_cast<py::ssize_t>(g.n_pixels()));
    const T* e = emb.data();
    const std::size_t D = static_cast<std::size_t>(emb.shape(0));
    int64_t* out = labels.mutable_data();
    {
        py::gil_scoped_release release;
        spoco::mutex_watershed_embeddings(e, D, static_cast<T>(delta_d), g, out, threads);
    }
    return labels;
}

template <class T>
carray<T> embedding_affinities(const carray<T>& emb, const std::array<int64_t, 3>& shape,
                               const carray<int64_t>& offsets, int n_attractive, double delta_d, int threads) {
    spoco::GridSpec g = make_spec(shape, offsets, n_attractive, {1, 1, 1}, false, 0, std::nullopt);
    require(emb.ndim() == 2 && static_cast<std::size_t>(emb.shape(1)) == g.n_pixels() && emb.shape(0) >= 1,
            "embeddings must have shape (D, N)");
    require(delta_d > 0, "delta_d must be > 0");
    carray<T> out({static_cast<py::ssize_t>(g.n_channels()), static_cast<py::ssize_t>(g.n_pixels())});
    const T* e = emb.data();
    const std::size_t D = static_cast<std::size_t>(emb.shape(0));
    T* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        spoco::embedding_affinities(e, D, static_cast<T>(delta_d), g, o, threads);
    }
    return out;
}

template <class T>
carray<int64_t> mws_graph(int64_t n_nodes, const carray<int64_t>& uvs, const carray<T>& weights,
                          const carray<int64_t>& mutex_uvs, const carray<T>& mutex_weights, int threads) {
    require(n_nodes >= 0, "n_nodes must be >= 0");
    require(uvs.ndim() == 2 && uvs.shape(1) == 2, "uvs must have shape (E, 2)");
    require(mutex_uvs.ndim() == 2 && mutex_uvs.shape(1) == 2, "mutex_uvs must have shape (M, 2)");
    require(weights.ndim() == 1 && weights.shape(0) == uvs.shape(0), "weights must have shape (E,)");
    require(mutex_weights.ndim() == 1 && mutex_weights.shape(0) == mutex_uvs.shape(0),
            "mutex_weights must have shape (M,)");
    const int64_t* p = uvs.data();
    for (py::ssize_t i = 0; i < 2 * uvs.shape(0); ++i) require(p[i] >= 0 && p[i] < n_nodes, "uvs out of range");
    const int64_t* q = mutex_uvs.data();
    for (py::ssize_t i = 0; i < 2 * mutex_uvs.shape(0); ++i)
        require(q[i] >= 0 && q[i] < n_nodes, "mutex_uvs out of range");
    carray<int64_t> labels(static_cast<py::ssize_t>(n_nodes));
    const T* w = weights.data();
    const T* mw = mutex_weights.data();
    const std::size_t E = static_cast<std::size_t>(uvs.shape(0)), M = static_cast<std::size_t>(mutex_uvs.shape(0));
    int64_t* out = labels.mutable_data();
    {
        py::gil_scoped_release release;
        spoco::mutex_watershed_graph(static_cast<std::size_t>(n_nodes), p, w, E, q, mw, M, out, threads);
    }
    return labels;
}

template <class T>
void bind_typed(py::module_& m) {
    m.def("mws_grid", &mws_grid<T>, py::arg("affinities"), py::arg("shape"), py::arg("offsets"),
          py::arg("n_attractive"), py::arg("strides"), py::arg("randomize_strides"), py::arg("seed"),
          py::arg("mask"), py::arg("threads"));
    m.def("mws_embeddings", &mws_embeddings<T>, py::arg("embeddings"), py::arg("shape"), py::arg("offsets"),
          py::arg("n_attractive"), py::arg("delta_d"), py::arg("strides"), py::arg("randomize_strides"),
          py::arg("seed"), py::arg("mask"), py::arg("threads"));
    m.def("embedding_affinities", &embedding_affinities<T>, py::arg("embeddings"), py::arg("shape"),
          py::arg("offsets"), py::arg("n_attractive"), py::arg("delta_d"), py::arg("threads"));
    m.def("mws_graph", &mws_graph<T>, py::arg("n_nodes"), py::arg("uvs"), py::arg("weights"),
          py::arg("mutex_uvs"), py::arg("mutex_weights"), py::arg("threads"));
}

}  // namespace

void register_mws(py::module_& m) {
    bind_typed<float>(m);
    bind_typed<double>(m);
    m.def(
        "_set_mws_handover_after",
        [](uint32_t batch) { spoco::detail::handover_after_batch.store(batch, std::memory_order_relaxed); },
        py::arg("batch"),
        "Tests only: > 0 makes the loop on stripes hand over to the sequential loop after that batch; 0 restores "
        "the automatic hand-over.");
    m.def(
        "_mws_handovers", [] { return spoco::detail::handover_count.load(std::memory_order_relaxed); },
        "How many loops on stripes have handed over to the sequential loop in this process.");
}
