// One instruction-set variant of the CPU loss kernels (see loss_cpu_entry.hpp); the
// build compiles this file with -DSPOCO_LOSS_ISA=generic|avx2|avx512 and matching flags.
// Every variant sums in a fixed order (results do not depend on the thread count); the
// vector variants contract multiply-adds into FMAs and use wider lane sums, so their
// last bits differ from the generic build's.
#include "bindings/loss_cpu_entry.hpp"
#include "bindings/pointers.hpp"

#include <stdexcept>
#include <string>

#include "core/loss_kernels.hpp"

namespace spoco::loss_cpu::SPOCO_LOSS_ISA {
namespace L = spoco::loss;

namespace {

using spoco::bindings::cp;
using spoco::bindings::LossCall;
using spoco::bindings::mp;

template <class T>
void anchor_pixel_t(const LossCall& c) {
    const auto a = spoco::bindings::anchor_pixel_args<T, L::AnchorPixelArgs<T>>(c);
    if (c.backward && !c.grad_out) throw std::invalid_argument("anchor_pixel backward needs grad_out");
    L::anchor_pixel_sums<T>(c.term, a, c.backward ? nullptr : mp<T>(c.out), c.backward ? cp<T>(c.grad_out) : nullptr,
                            mp<T>(c.grad_emb), mp<T>(c.grad_anchors), c.threads);
}

template <class T>
void pixel_terms_t(const LossCall& c) {
    L::LossTermsArgs<T> a;
    a.emb = cp<T>(c.emb), a.emb_g = cp<T>(c.emb_g), a.slot = cp<int64_t>(c.slot), a.inst_pix = cp<int64_t>(c.inst_pix);
    a.unlabeled_push = c.unlabeled_push, a.cons_pix = cp<int64_t>(c.cons_pix), a.n_cons = cp<int64_t>(c.n_cons);
    a.up_active = mp<uint8_t>(c.up_active);
    a.B = c.B, a.D = c.D, a.N = c.N, a.C = c.C, a.K = c.K;
    a.h = static_cast<T>(c.h), a.delta_v = static_cast<T>(c.delta_v), a.delta_d = static_cast<T>(c.delta_d);
    if (c.backward)
        L::loss_terms_backward<T>(a, cp<T>(c.means), cp<T>(c.counts), cp<T>(c.grad_means), cp<T>(c.grad_pull),
                                  cp<T>(c.grad_inst), cp<T>(c.grad_upush), cp<T>(c.grad_cons), mp<T>(c.grad_emb),
                                  c.threads);
    else
        L::loss_terms_forward<T>(a, mp<T>(c.means), mp<T>(c.counts), mp<T>(c.pull), mp<T>(c.inst), mp<T>(c.upush),
                                 mp<T>(c.cons), c.threads);
}

template <class T>
void segment_sum_t(const LossCall& c) {
    L::segment_sum(cp<T>(c.emb), cp<int64_t>(c.slot), c.B, c.D, c.N, c.C, mp<T>(c.sums), mp<T>(c.counts), c.threads);
}

template <class T>
void segment_sum_backward_t(const LossCall& c) {
    L::segment_broadcast(cp<T>(c.grad_sums), cp<int64_t>(c.slot), c.B, c.D, c.N, c.C, mp<T>(c.grad_emb), false,
                         c.threads);
}

template <class T>
void pull_sums_t(const LossCall& c) {
    L::pull_sums(cp<T>(c.emb), cp<T>(c.means), cp<int64_t>(c.slot), c.B, c.D, c.N, c.C, static_cast<T>(c.delta_v),
                 mp<T>(c.pull), c.backward ? cp<T>(c.grad_pull) : nullptr, mp<T>(c.grad_emb), mp<T>(c.grad_means),
                 c.threads);
}

template <class T>
void consistency_anchors_t(const LossCall& c) {
    L::consistency_anchors(cp<T>(c.emb), cp<T>(c.emb_g), cp<uint8_t>(c.unlabeled), cp<double>(c.keys), c.B, c.D, c.N,
                           c.K, static_cast<T>(c.delta_v * c.delta_v), c.coverage_stop, mp<int64_t>(c.pix),
                           mp<uint8_t>(c.valid), c.threads);
}

}  // namespace

void anchor_pixel(const LossCall& c) { c.dbl ? anchor_pixel_t<double>(c) : anchor_pixel_t<float>(c); }
void segment_sum(const LossCall& c) { c.dbl ? segment_sum_t<double>(c) : segment_sum_t<float>(c); }
void segment_sum_backward(const LossCall& c) {
    c.dbl ? segment_sum_backward_t<double>(c) : segment_sum_backward_t<float>(c);
}
void pull_sums(const LossCall& c) { c.dbl ? pull_sums_t<double>(c) : pull_sums_t<float>(c); }
void pixel_terms(const LossCall& c) { c.dbl ? pixel_terms_t<double>(c) : pixel_terms_t<float>(c); }
void consistency_anchors(const LossCall& c) {
    c.dbl ? consistency_anchors_t<double>(c) : consistency_anchors_t<float>(c);
}

bool all_finite(const LossCall& c) {
    return c.dbl ? L::all_finite(cp<double>(c.x), c.n, c.threads) : L::all_finite(cp<float>(c.x), c.n, c.threads);
}

SlotsResult cluster_slots(const LossCall& c) {
    L::ClusterSlots r = L::cluster_slots(cp<int64_t>(c.target), cp<double>(c.keys), c.B, c.N, c.ignore_index, c.sparse,
                                         mp<int64_t>(c.slot), c.threads);
    SlotsResult out;
    out.C = r.C, out.negative = r.negative, out.labels = std::move(r.labels), out.pix = std::move(r.pix);
    return out;
}

}  // namespace spoco::loss_cpu::SPOCO_LOSS_ISA
