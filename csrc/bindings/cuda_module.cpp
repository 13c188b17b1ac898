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

// ---- loss kernels: pointers, dims, then (scratch, scratch_bytes, deterministic, device, stream)
namespace C = spoco::cuda;

bool is_double(const std::string& dtype) {
    if (dtype == "float64") return true;
    if (dtype == "float32") return false;
    throw std::invalid_argument("dtype must be float32 or float64, got " + dtype);
}

C::Launch launch(uintptr_t scratch, int64_t scratch_bytes, bool deterministic, int device, uintptr_t stream) {
    return C::Launch{reinterpret_cast<void*>(scratch), scratch_bytes, deterministic, device,
                     reinterpret_cast<cudaStream_t>(stream)};
}

using spoco::bindings::cp;
using spoco::bindings::mp;

template <class T>
void anchor_pixel_t(int term, bool backward, uintptr_t emb, uintptr_t anchors, uintptr_t emb_g, uintptr_t anchors_g,
                    uintptr_t slot, uintptr_t weight, uintptr_t n_valid, int64_t B, int64_t D, int64_t N, int64_t K,
                    double h, double delta, uintptr_t out, uintptr_t grad_out, uintptr_t grad_emb,
                    uintptr_t grad_anchors, const C::Launch& l) {
    C::LossArgs<T> a;
    a.emb = cp<T>(emb), a.anchors = cp<T>(anchors), a.emb_g = cp<T>(emb_g), a.anchors_g = cp<T>(anchors_g);
    a.slot = cp<int64_t>(slot), a.weight = cp<T>(weight), a.n_valid = cp<int64_t>(n_valid);
    a.B = B, a.D = D, a.N = N, a.K = K, a.h = static_cast<T>(h), a.delta = static_cast<T>(delta);
    if (backward)
        C::anchor_pixel_sums_backward<T>(term, a, cp<T>(grad_out), mp<T>(grad_emb), mp<T>(grad_anchors), l);
    else
        C::anchor_pixel_sums<T>(term, a, mp<T>(out), l);
}

void loss_anchor_pixel(int term, bool backward, const std::string& dtype, uintptr_t emb, uintptr_t anchors,
                       uintptr_t emb_g, uintptr_t anchors_g, uintptr_t slot, uintptr_t weight, uintptr_t n_valid,
                       int64_t B, int64_t D, int64_t N, int64_t K, double h, double delta, uintptr_t out,
                       uintptr_t grad_out, uintptr_t grad_emb, uintptr_t grad_anchors, uintptr_t scratch,
                       int64_t scratch_bytes, bool deterministic, int device, uintptr_t stream) {
    const auto l = launch(scratch, scratch_bytes, deterministic, device, stream);
    py::gil_scoped_release release;
    if (is_double(dtype))
        anchor_pixel_t<double>(term, backward, emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N, K, h,
                               delta, out, grad_out, grad_emb, grad_anchors, l);
    else
        anchor_pixel_t<float>(term, backward, emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N, K, h,
                              delta, out, grad_out, grad_emb, grad_anchors, l);
}

void loss_segment_sum(const std::string& dtype, uintptr_t emb, uintptr_t slot, int64_t B, int64_t D, int64_t N,
                      int64_t K, uintptr_t sums, uintptr_t counts, uintptr_t scratch, int64_t scratch_bytes,
                      bool deterministic, int device, uintptr_t stream) {
    const auto l = launch(scratch, scratch_bytes, deterministic, device, stream);
    py::gil_scoped_release release;
    if (is_double(dtype))
        C::segment_sum<double>(cp<double>(emb), cp<int64_t>(slot), B, D, N, K, mp<double>(sums), mp<double>(counts), l);
    else
        C::segment_sum<float>(cp<float>(emb), cp<int64_t>(slot), B, D, N, K, mp<float>(sums), mp<float>(counts), l);
}

void loss_segment_sum_backward(const std::string& dtype, uintptr_t grad_sums, uintptr_t slot, int64_t B, int64_t D,
                               int64_t N, int64_t K, uintptr_t grad_emb, uintptr_t scratch, int64_t scratch_bytes,
                               bool deterministic, int device, uintptr_t stream) {
    const auto l = launch(scratch, scratch_bytes, deterministic, device, stream);
    py::gil_scoped_release release;
    if (is_double(dtype))
        C::segment_sum_backward<double>(cp<double>(grad_sums), cp<int64_t>(slot), B, D, N, K, mp<double>(grad_emb), l);
    else
        C::segment_sum_backward<float>(cp<float>(grad_sums), cp<int64_t>(slot), B, D, N, K, mp<float>(grad_emb), l);
}

void loss_pull_sums(const std::string& dtype, uintptr_t emb, uintptr_t means, uintptr_t slot, int64_t B, int64_t D,
                    int64_t N, int64_t K, double delta_v, uintptr_t out, uintptr_t grad, uintptr_t grad_emb,
                    uintptr_t grad_means, uintptr_t scratch, int64_t scratch_bytes, bool deterministic, int device,
                    uintptr_t stream) {
    const auto l = launch(scratch, scratch_bytes, deterministic, device, stream);
    py::gil_scoped_release release;
    if (is_double(dtype))
        C::pull_sums<double>(cp<double>(emb), cp<double>(means), cp<int64_t>(slot), B, D, N, K, delta_v,
                             mp<double>(out), cp<double>(grad), mp<double>(grad_emb), mp<double>(grad_means), l);
    else
        C::pull_sums<float>(cp<float>(emb), cp<float>(means), cp<int64_t>(slot), B, D, N, K,
                            static_cast<float>(delta_v), mp<float>(out), cp<float>(grad), mp<float>(grad_emb),
                            mp<float>(grad_means), l);
}

void loss_consistency_anchors(const std::string& dtype, uintptr_t emb_f, uintptr_t emb_g, uintptr_t unlabeled,
                              uintptr_t keys, int64_t B, int64_t D, int64_t N, int64_t K, double delta_v,
                              double coverage_stop, uintptr_t pix, uintptr_t valid, uintptr_t scratch,
                              int64_t scratch_bytes, bool deterministic, int device, uintptr_t stream) {
    const auto l = launch(scratch, scratch_bytes, deterministic, device, stream);
    py::gil_scoped_release release;
    if (is_double(dtype))
        C::consistency_anchors<double>(cp<double>(emb_f), cp<double>(emb_g), cp<uint8_t>(unlabeled),
                                       cp<double>(keys), B, D, N, K, delta_v * delta_v, coverage_stop,
                                       mp<int64_t>(pix), mp<uint8_t>(valid), l);
    else
        C::consistency_anchors<float>(cp<float>(emb_f), cp<float>(emb_g), cp<uint8_t>(unlabeled), cp<double>(keys), B,
                                      D, N, K, static_cast<float>(delta_v * delta_v), coverage_stop,
                                      mp<int64_t>(pix), mp<uint8_t>(valid), l);
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
    m.def("loss_anchor_pixel", &loss_anchor_pixel, "Anchor x pixel sums of the SPOCO loss (forward or backward).");
    m.def("loss_segment_sum", &loss_segment_sum, "Per-slot embedding sums and pixel counts.");
    m.def("loss_segment_sum_backward", &loss_segment_sum_backward, "Gradient of loss_segment_sum.");
    m.def("loss_pull_sums", &loss_pull_sums, "Pull hinge sums per slot (forward, or backward when grad != 0).");
    m.def("loss_consistency_anchors", &loss_consistency_anchors, "Coverage-driven consistency anchors (Eq. 7).");
}
