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
#include "cuda/loss.cuh"
#include "bindings/loss_call_bind.hpp"
#include "bindings/pointers.hpp"

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

// ---- loss kernels: arguments by name in a LossCall (loss_call.hpp), the same fields as the CPU entry points,
// plus scratch, scratch_bytes, deterministic, device and stream
namespace C = spoco::cuda;
using spoco::bindings::cp;
using spoco::bindings::LossCall;
using spoco::bindings::mp;

C::Launch launch(const LossCall& c) {
    return C::Launch{reinterpret_cast<void*>(c.scratch), c.scratch_bytes, c.deterministic, c.device,
                     reinterpret_cast<cudaStream_t>(c.stream)};
}

template <class T>
void anchor_pixel_t(const LossCall& c) {
    const auto a = spoco::bindings::anchor_pixel_args<T, C::LossArgs<T>>(c);
    if (c.backward)
        C::anchor_pixel_sums_backward<T>(c.term, a, cp<T>(c.grad_out), mp<T>(c.grad_emb), mp<T>(c.grad_anchors),
                                         launch(c));
    else
        C::anchor_pixel_sums<T>(c.term, a, mp<T>(c.out), launch(c));
}

template <class T>
void segment_sum_t(const LossCall& c) {
    C::segment_sum<T>(cp<T>(c.emb), cp<int64_t>(c.slot), c.B, c.D, c.N, c.C, mp<T>(c.sums), mp<T>(c.counts), launch(c));
}

template <class T>
void segment_sum_backward_t(const LossCall& c) {
    C::segment_sum_backward<T>(cp<T>(c.grad_sums), cp<int64_t>(c.slot), c.B, c.D, c.N, c.C, mp<T>(c.grad_emb),
                               launch(c));
}

template <class T>
void pull_sums_t(const LossCall& c) {
    C::pull_sums<T>(cp<T>(c.emb), cp<T>(c.means), cp<int64_t>(c.slot), c.B, c.D, c.N, c.C, static_cast<T>(c.delta_v),
                    mp<T>(c.pull), c.backward ? cp<T>(c.grad_pull) : nullptr, mp<T>(c.grad_emb), mp<T>(c.grad_means),
                    launch(c));
}

template <class T>
void consistency_anchors_t(const LossCall& c) {
    C::consistency_anchors<T>(cp<T>(c.emb), cp<T>(c.emb_g), cp<uint8_t>(c.unlabeled), cp<double>(c.keys), c.B, c.D,
                              c.N, c.K, static_cast<T>(c.delta_v * c.delta_v), c.coverage_stop, mp<int64_t>(c.pix),
                              mp<uint8_t>(c.valid), launch(c));
}

// Every entry point releases the GIL and picks the float type from c.dbl.
#define SPOCO_CUDA_ENTRY(fn)                            \
    [](const LossCall& c) {                             \
        py::gil_scoped_release release;                 \
        c.dbl ? fn<double>(c) : fn<float>(c);           \
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
    m.def("loss_scratch_bytes", &spoco::cuda::loss_scratch_bytes, "Scratch bytes a loss launcher needs.");
    spoco::bindings::register_loss_call(m);
    m.def("loss_anchor_pixel", SPOCO_CUDA_ENTRY(anchor_pixel_t), "Anchor x pixel sums of the SPOCO loss (forward or backward).");
    m.def("loss_segment_sum", SPOCO_CUDA_ENTRY(segment_sum_t), "Per-slot embedding sums and pixel counts.");
    m.def("loss_segment_sum_backward", SPOCO_CUDA_ENTRY(segment_sum_backward_t), "Gradient of loss_segment_sum.");
    m.def("loss_pull_sums", SPOCO_CUDA_ENTRY(pull_sums_t), "Pull hinge sums per slot (forward or backward).");
    m.def("loss_consistency_anchors", SPOCO_CUDA_ENTRY(consistency_anchors_t),
          "Coverage-driven consistency anchors (Eq. 7).");
}
