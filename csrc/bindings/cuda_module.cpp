// spoco._cuda: CUDA kernels on raw device pointers handed over by spoco.ops,
// which validates tensors (device, dtype, shape, contiguity) before calling.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "cuda/affinities.cuh"

namespace py = pybind11;

namespace {

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

void embedding_affinities(uintptr_t emb, uintptr_t out, const std::string& dtype, int64_t D,
                          const std::array<int64_t, 3>& shape, const std::vector<int64_t>& offsets,
                          int n_attractive, double delta_d, int device, uintptr_t stream) {
    auto s = reinterpret_cast<cudaStream_t>(stream);
    py::gil_scoped_release release;
    if (dtype == "float32")
        spoco::cuda::embedding_affinities(reinterpret_cast<const float*>(emb), reinterpret_cast<float*>(out), D,
                                          shape.data(), offsets, n_attractive, static_cast<float>(delta_d), device, s);
    else if (dtype == "float64")
        spoco::cuda::embedding_affinities(reinterpret_cast<const double*>(emb), reinterpret_cast<double*>(out), D,
                                          shape.data(), offsets, n_attractive, delta_d, device, s);
    else
        throw std::invalid_argument("dtype must be float32 or float64");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "spoco's optional CUDA kernels (static cudart; pointers come from spoco.ops)";
#ifdef SPOCO_CUDA_ARCHS
    m.attr("archs") = SPOCO_CUDA_ARCHS;
#endif
    m.attr("cuda_runtime_version") = CUDART_VERSION;
    m.def("device_count", &device_count, "Number of CUDA devices visible to spoco's runtime (0 without a driver).");
    m.def("embedding_affinities", &embedding_affinities, py::arg("emb_ptr"), py::arg("out_ptr"), py::arg("dtype"),
          py::arg("D"), py::arg("shape"), py::arg("offsets"), py::arg("n_attractive"), py::arg("delta_d"),
          py::arg("device"), py::arg("stream"));
}
