// pybind11 bindings of the SPOCO loss kernels (csrc/core/loss_kernels.hpp).
// spoco/ops/_kernel.py validates every tensor (dtype, device, shape, contiguity) and passes
// raw CPU pointers by name in a LossCall (loss_call.hpp). The kernels are compiled for
// several instruction sets (loss_cpu_entry.cpp); the best one the CPU supports runs,
// unless SPOCO_CPU_ISA=generic|avx2|avx512 says otherwise. All give the same results up to
// rounding (FMA contraction, lane count): tests/ops/test_isa_variants.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "bindings/loss_call_bind.hpp"
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

using spoco::bindings::LossCall;

// Every entry point takes a LossCall and releases the GIL while the kernel runs.
#define SPOCO_ENTRY(fn)                        \
    [](const LossCall& c) {                    \
        py::gil_scoped_release release;        \
        SPOCO_DISPATCH(fn, c)                  \
    }

py::tuple cluster_slots(const LossCall& c) {
    E::SlotsResult r;
    {
        py::gil_scoped_release release;
        r = [&]() -> E::SlotsResult { SPOCO_DISPATCH(cluster_slots, c) }();
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
    spoco::bindings::register_loss_call(m);
    // fields read: term, backward, dbl, emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N, K, h,
    // delta, then out (forward) or grad_out, grad_emb, grad_anchors (backward), threads
    m.def("loss_anchor_pixel", SPOCO_ENTRY(anchor_pixel), "Anchor x pixel sums of the SPOCO loss (forward or backward).");
    // dbl, emb, slot, B, D, N, C, sums, counts, threads
    m.def("loss_segment_sum", SPOCO_ENTRY(segment_sum), "Per-slot embedding sums and pixel counts.");
    // dbl, grad_sums, slot, B, D, N, C, grad_emb, threads
    m.def("loss_segment_sum_backward", SPOCO_ENTRY(segment_sum_backward), "Gradient of loss_segment_sum.");
    // dbl, backward, emb, means, slot, B, D, N, C, delta_v, then pull (forward) or grad_pull, grad_emb, grad_means
    m.def("loss_pull_sums", SPOCO_ENTRY(pull_sums), "Pull hinge sums per slot (forward or backward).");
    // dbl, emb, emb_g, unlabeled, keys, B, D, N, K, delta_v, coverage_stop, pix, valid, threads
    m.def("loss_consistency_anchors", SPOCO_ENTRY(consistency_anchors), "Coverage-driven consistency anchors (Eq. 7).");
    // dbl, x, n, threads
    m.def("loss_all_finite", SPOCO_ENTRY(all_finite), "Whether n floats at a CPU address are all finite.");
    // dbl, backward, emb, emb_g, slot, inst_pix, unlabeled_push, cons_pix, n_cons, B, D, N, C, K, h, delta_v,
    // delta_d, up_active, means, counts, then pull, inst, upush, cons (forward) or grad_means, grad_pull,
    // grad_inst, grad_upush, grad_cons, grad_emb (backward), threads
    m.def("loss_pixel_terms", SPOCO_ENTRY(pixel_terms),
          "Fused loss reductions (segment means, pull, anchor x pixel terms) or their backward, in one pass.");
    // target, keys, B, N, ignore_index, sparse, slot, threads
    m.def("loss_cluster_slots", &cluster_slots,
          "Per-image cluster slots of int64 labels: (C, negative label found, labels (B*C), anchor pixels (B*C)).");
    m.attr("loss_block_pixels") = py::int_(spoco::loss::kSub);  // pixels per block of the up_active masks
    m.def("loss_isa", &isa_name, "Instruction set of the CPU loss kernels in use.");
}
