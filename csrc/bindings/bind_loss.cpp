// pybind11 bindings of the SPOCO loss kernels (csrc/core/loss_kernels.hpp).
// spoco.ops.fused validates every tensor (dtype, device, shape, contiguity) and passes
// raw CPU pointers; `dtype` selects float32/float64. The kernels are compiled for
// several instruction sets (loss_cpu_entry.cpp); the best one the CPU supports runs,
// unless SPOCO_CPU_ISA=generic|avx2|avx512 says otherwise. All give identical results.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "bindings/loss_cpu_entry.hpp"
#include "core/loss_pass.hpp"

namespace py = pybind11;
namespace E = spoco::loss_cpu;

namespace {

enum class Isa { generic, avx2, avx512 };

bool cpu_has(const char* name) {
#if defined(SPOCO_LOSS_X86_VARIANTS) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (std::string(name) == "avx512")
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return __builtin_cpu_supports("avx2");
#else
    (void)name;
    return false;
#endif
}

Isa choose_isa() {
    const char* env = std::getenv("SPOCO_CPU_ISA");
    const std::string want = env ? env : "";
    if (want == "generic") return Isa::generic;
    if (want == "avx2" && cpu_has("avx2")) return Isa::avx2;
    if ((want.empty() || want == "avx512") && cpu_has("avx512")) return Isa::avx512;
    if (cpu_has("avx2")) return Isa::avx2;
    return Isa::generic;
}

Isa isa() {
    static const Isa chosen = choose_isa();
    return chosen;
}

bool is_double(const std::string& dtype) {
    if (dtype == "float64") return true;
    if (dtype == "float32") return false;
    throw std::invalid_argument("dtype must be float32 or float64, got " + dtype);
}

#ifdef SPOCO_LOSS_X86_VARIANTS
#define SPOCO_DISPATCH(fn, ...)                              \
    switch (isa()) {                                         \
        case Isa::avx512: return E::avx512::fn(__VA_ARGS__); \
        case Isa::avx2: return E::avx2::fn(__VA_ARGS__);     \
        default: return E::generic::fn(__VA_ARGS__);         \
    }
#else
#define SPOCO_DISPATCH(fn, ...) return E::generic::fn(__VA_ARGS__);
#endif

void anchor_pixel(int term, bool backward, const std::string& dtype, uintptr_t emb, uintptr_t anchors,
                  uintptr_t emb_g, uintptr_t anchors_g, uintptr_t slot, uintptr_t weight, uintptr_t n_valid,
                  int64_t B, int64_t D, int64_t N, int64_t K, double h, double delta, uintptr_t out,
                  uintptr_t grad_out, uintptr_t grad_emb, uintptr_t grad_anchors, int threads) {
    const bool dbl = is_double(dtype);
    py::gil_scoped_release release;
    SPOCO_DISPATCH(anchor_pixel, term, backward, dbl, emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N,
                   K, h, delta, out, grad_out, grad_emb, grad_anchors, threads)
}

void segment_sum(const std::string& dtype, uintptr_t emb, uintptr_t slot, int64_t B, int64_t D, int64_t N, int64_t C,
                 uintptr_t sums, uintptr_t counts, int threads) {
    const bool dbl = is_double(dtype);
    py::gil_scoped_release release;
    SPOCO_DISPATCH(segment_sum, dbl, emb, slot, B, D, N, C, sums, counts, threads)
}

void segment_sum_backward(const std::string& dtype, uintptr_t grad_sums, uintptr_t slot, int64_t B, int64_t D,
                          int64_t N, int64_t C, uintptr_t grad_emb, int threads) {
    const bool dbl = is_double(dtype);
    py::gil_scoped_release release;
    SPOCO_DISPATCH(segment_sum_backward, dbl, grad_sums, slot, B, D, N, C, grad_emb, threads)
}

void pull_sums(const std::string& dtype, uintptr_t emb, uintptr_t means, uintptr_t slot, int64_t B, int64_t D,
               int64_t N, int64_t C, double delta_v, uintptr_t out, uintptr_t grad, uintptr_t grad_emb,
               uintptr_t grad_means, int threads) {
    const bool dbl = is_double(dtype);
    py::gil_scoped_release release;
    SPOCO_DISPATCH(pull_sums, dbl, emb, means, slot, B, D, N, C, delta_v, out, grad, grad_emb, grad_means, threads)
}

void consistency_anchors(const std::string& dtype, uintptr_t emb_f, uintptr_t emb_g, uintptr_t unlabeled,
                         uintptr_t keys, int64_t B, int64_t D, int64_t N, int64_t K, double delta_v,
                         double coverage_stop, uintptr_t pix, uintptr_t valid, int threads) {
    const bool dbl = is_double(dtype);
    py::gil_scoped_release release;
    SPOCO_DISPATCH(consistency_anchors, dbl, emb_f, emb_g, unlabeled, keys, B, D, N, K, delta_v, coverage_stop, pix,
                   valid, threads)
}

bool all_finite(const std::string& dtype, uintptr_t x, int64_t n, int threads) {
    const bool dbl = is_double(dtype);
    py::gil_scoped_release release;
    SPOCO_DISPATCH(all_finite, dbl, x, n, threads)
}

void pixel_terms(bool backward, const std::string& dtype, uintptr_t emb, uintptr_t emb_g, uintptr_t slot,
                 uintptr_t inst_pix, bool unlabeled_push, uintptr_t cons_pix, uintptr_t n_cons, int64_t B, int64_t D,
                 int64_t N, int64_t C, int64_t K, double h, double delta_v, double delta_d, uintptr_t means,
                 uintptr_t counts, const std::vector<uintptr_t>& outs, int threads) {
    const bool dbl = is_double(dtype);
    py::gil_scoped_release release;
    SPOCO_DISPATCH(pixel_terms, backward, dbl, emb, emb_g, slot, inst_pix, unlabeled_push, cons_pix, n_cons, B, D, N,
                   C, K, h, delta_v, delta_d, means, counts, outs, threads)
}

py::tuple cluster_slots(uintptr_t target, uintptr_t keys, int64_t B, int64_t N, int64_t ignore, bool sparse,
                        uintptr_t slot, int threads) {
    E::SlotsResult r;
    {
        py::gil_scoped_release release;
        r = [&]() -> E::SlotsResult { SPOCO_DISPATCH(cluster_slots, target, keys, B, N, ignore, sparse, slot, threads) }();
    }
    return py::make_tuple(r.C, r.negative, r.labels, r.pix);
}

std::string isa_name() {
    switch (isa()) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        default: return "generic";
    }
}

}  // namespace

void register_loss(py::module_& m) {
    m.def("loss_anchor_pixel", &anchor_pixel, "Anchor x pixel sums of the SPOCO loss (forward or backward).");
    m.def("loss_segment_sum", &segment_sum, "Per-slot embedding sums and pixel counts.");
    m.def("loss_segment_sum_backward", &segment_sum_backward, "Gradient of loss_segment_sum.");
    m.def("loss_pull_sums", &pull_sums, "Pull hinge sums per slot (forward, or backward when grad != 0).");
    m.def("loss_consistency_anchors", &consistency_anchors, "Coverage-driven consistency anchors (Eq. 7).");
    m.def("loss_all_finite", &all_finite, "Whether n floats at a CPU address are all finite.");
    m.def("loss_pixel_terms", &pixel_terms,
          "Fused loss reductions (segment means, pull, anchor x pixel terms) or their backward, in one pass.");
    m.def("loss_cluster_slots", &cluster_slots,
          "Per-image cluster slots of int64 labels: (C, negative label found, labels (B*C), anchor pixels (B*C)).");
    m.attr("loss_block_pixels") = py::int_(spoco::loss::kSub);  // pixels per block of the up_active masks
    m.def("loss_isa", &isa_name, "Instruction set of the CPU loss kernels in use.");
}
