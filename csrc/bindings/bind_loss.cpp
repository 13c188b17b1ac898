// pybind11 bindings of the SPOCO loss kernels (csrc/core/loss_kernels.hpp).
// spoco.ops.fused validates every tensor (dtype, device, shape, contiguity, value
// ranges of the slots) and passes raw CPU pointers; `dtype` selects float32/float64.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/loss_kernels.hpp"

namespace py = pybind11;
namespace L = spoco::loss;

namespace {

template <class T>
const T* cptr(uintptr_t p) {
    return reinterpret_cast<const T*>(p);
}
template <class T>
T* mptr(uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

bool is_double(const std::string& dtype) {
    if (dtype == "float64") return true;
    if (dtype == "float32") return false;
    throw std::invalid_argument("dtype must be float32 or float64, got " + dtype);
}

template <class T>
L::AnchorPixelArgs<T> make_args(uintptr_t emb, uintptr_t anchors, uintptr_t emb_g, uintptr_t anchors_g,
                                uintptr_t slot, uintptr_t weight, uintptr_t n_valid, int64_t B, int64_t D, int64_t N,
                                int64_t K, double h, double delta) {
    L::AnchorPixelArgs<T> a;
    a.emb = cptr<T>(emb), a.anchors = cptr<T>(anchors), a.emb_g = cptr<T>(emb_g), a.anchors_g = cptr<T>(anchors_g);
    a.slot = cptr<int64_t>(slot), a.weight = cptr<T>(weight), a.n_valid = cptr<int64_t>(n_valid);
    a.B = B, a.D = D, a.N = N, a.K = K, a.h = static_cast<T>(h), a.delta = static_cast<T>(delta);
    return a;
}

template <class T, class F>
void by_term(int term, F&& f) {
    switch (term) {
        case L::kSoftMask: f(std::integral_constant<int, L::kSoftMask>{}); break;
        case L::kUnlabeledPush: f(std::integral_constant<int, L::kUnlabeledPush>{}); break;
        case L::kConsistency: f(std::integral_constant<int, L::kConsistency>{}); break;
        default: throw std::invalid_argument("unknown anchor x pixel term " + std::to_string(term));
    }
}

template <class T>
void anchor_pixel_impl(int term, bool backward, uintptr_t emb, uintptr_t anchors, uintptr_t emb_g,
                       uintptr_t anchors_g, uintptr_t slot, uintptr_t weight, uintptr_t n_valid, int64_t B, int64_t D,
                       int64_t N, int64_t K, double h, double delta, uintptr_t out, uintptr_t grad_out,
                       uintptr_t grad_emb, uintptr_t grad_anchors, int threads) {
    const auto a = make_args<T>(emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N, K, h, delta);
    by_term<T>(term, [&](auto tag) {
        constexpr int TERM = decltype(tag)::value;
        if (backward)
            L::anchor_pixel_sums_backward<TERM, T>(a, cptr<T>(grad_out), mptr<T>(grad_emb), mptr<T>(grad_anchors),
                                                   threads);
        else
            L::anchor_pixel_sums<TERM, T>(a, mptr<T>(out), threads);
    });
}

void anchor_pixel(int term, bool backward, const std::string& dtype, uintptr_t emb, uintptr_t anchors,
                  uintptr_t emb_g, uintptr_t anchors_g, uintptr_t slot, uintptr_t weight, uintptr_t n_valid,
                  int64_t B, int64_t D, int64_t N, int64_t K, double h, double delta, uintptr_t out,
                  uintptr_t grad_out, uintptr_t grad_emb, uintptr_t grad_anchors, int threads) {
    py::gil_scoped_release release;
    if (is_double(dtype))
        anchor_pixel_impl<double>(term, backward, emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N, K,
                                  h, delta, out, grad_out, grad_emb, grad_anchors, threads);
    else
        anchor_pixel_impl<float>(term, backward, emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N, K,
                                 h, delta, out, grad_out, grad_emb, grad_anchors, threads);
}

void segment_sum(const std::string& dtype, uintptr_t emb, uintptr_t slot, int64_t B, int64_t D, int64_t N, int64_t C,
                 uintptr_t sums, uintptr_t counts, int threads) {
    py::gil_scoped_release release;
    if (is_double(dtype))
        L::segment_sum(cptr<double>(emb), cptr<int64_t>(slot), B, D, N, C, mptr<double>(sums), mptr<double>(counts),
                       threads);
    else
        L::segment_sum(cptr<float>(emb), cptr<int64_t>(slot), B, D, N, C, mptr<float>(sums), mptr<float>(counts),
                       threads);
}

void segment_sum_backward(const std::string& dtype, uintptr_t grad_sums, uintptr_t slot, int64_t B, int64_t D,
                          int64_t N, int64_t C, uintptr_t grad_emb, int threads) {
    py::gil_scoped_release release;
    if (is_double(dtype))
        L::segment_sum_backward(cptr<double>(grad_sums), cptr<int64_t>(slot), B, D, N, C, mptr<double>(grad_emb),
                                threads);
    else
        L::segment_sum_backward(cptr<float>(grad_sums), cptr<int64_t>(slot), B, D, N, C, mptr<float>(grad_emb),
                                threads);
}

void pull_sums(const std::string& dtype, uintptr_t emb, uintptr_t means, uintptr_t slot, int64_t B, int64_t D,
               int64_t N, int64_t C, double delta_v, uintptr_t out, uintptr_t grad, uintptr_t grad_emb,
               uintptr_t grad_means, int threads) {
    py::gil_scoped_release release;
    if (is_double(dtype))
        L::pull_sums(cptr<double>(emb), cptr<double>(means), cptr<int64_t>(slot), B, D, N, C, delta_v,
                     mptr<double>(out), cptr<double>(grad), mptr<double>(grad_emb), mptr<double>(grad_means), threads);
    else
        L::pull_sums(cptr<float>(emb), cptr<float>(means), cptr<int64_t>(slot), B, D, N, C,
                     static_cast<float>(delta_v), mptr<float>(out), cptr<float>(grad), mptr<float>(grad_emb),
                     mptr<float>(grad_means), threads);
}

void consistency_anchors(const std::string& dtype, uintptr_t emb_f, uintptr_t emb_g, uintptr_t unlabeled,
                         uintptr_t keys, int64_t B, int64_t D, int64_t N, int64_t K, double delta_v,
                         double coverage_stop, uintptr_t pix, uintptr_t valid, int threads) {
    py::gil_scoped_release release;
    if (is_double(dtype))
        L::consistency_anchors(cptr<double>(emb_f), cptr<double>(emb_g), cptr<uint8_t>(unlabeled),
                               cptr<double>(keys), B, D, N, K, delta_v * delta_v, coverage_stop, mptr<int64_t>(pix),
                               mptr<uint8_t>(valid), threads);
    else
        L::consistency_anchors(cptr<float>(emb_f), cptr<float>(emb_g), cptr<uint8_t>(unlabeled), cptr<double>(keys),
                               B, D, N, K, static_cast<float>(delta_v * delta_v), coverage_stop, mptr<int64_t>(pix),
                               mptr<uint8_t>(valid), threads);
}

}  // namespace

void register_loss(py::module_& m) {
    m.def("loss_anchor_pixel", &anchor_pixel, "Anchor x pixel sums of the SPOCO loss (forward or backward).");
    m.def("loss_segment_sum", &segment_sum, "Per-slot embedding sums and pixel counts.");
    m.def("loss_segment_sum_backward", &segment_sum_backward, "Gradient of loss_segment_sum.");
    m.def("loss_pull_sums", &pull_sums, "Pull hinge sums per slot (forward, or backward when grad != 0).");
    m.def("loss_consistency_anchors", &consistency_anchors, "Coverage-driven consistency anchors (Eq. 7).");
}
