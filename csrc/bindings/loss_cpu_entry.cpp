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
using spoco::bindings::mp;

template <class T>
void anchor_pixel_t(int term, bool backward, uintptr_t emb, uintptr_t anchors, uintptr_t emb_g, uintptr_t anchors_g,
                    uintptr_t slot, uintptr_t weight, uintptr_t n_valid, int64_t B, int64_t D, int64_t N, int64_t K,
                    double h, double delta, uintptr_t out, uintptr_t grad_out, uintptr_t grad_emb,
                    uintptr_t grad_anchors, int threads) {
    L::AnchorPixelArgs<T> a;
    a.emb = cp<T>(emb), a.anchors = cp<T>(anchors), a.emb_g = cp<T>(emb_g), a.anchors_g = cp<T>(anchors_g);
    a.slot = cp<int64_t>(slot), a.weight = cp<T>(weight), a.n_valid = cp<int64_t>(n_valid);
    a.B = B, a.D = D, a.N = N, a.K = K, a.h = static_cast<T>(h), a.delta = static_cast<T>(delta);
    if (backward && !grad_out) throw std::invalid_argument("anchor_pixel backward needs grad_out");
    L::anchor_pixel_sums<T>(term, a, backward ? nullptr : mp<T>(out), backward ? cp<T>(grad_out) : nullptr,
                            mp<T>(grad_emb), mp<T>(grad_anchors), threads);
}

/// outs: forward (pull, inst, up, cons); backward (grad_means, grad_pull, grad_inst, grad_up, grad_cons, grad_emb).
template <class T>
void pixel_terms_t(bool backward, uintptr_t emb, uintptr_t emb_g, uintptr_t slot, uintptr_t inst_pix,
                   bool unlabeled_push, uintptr_t cons_pix, uintptr_t n_cons, int64_t B, int64_t D, int64_t N,
                   int64_t C, int64_t K, double h, double delta_v, double delta_d, uintptr_t means, uintptr_t counts,
                   const std::vector<uintptr_t>& outs, int threads) {
    // outs: forward pull, inst, up, cons, up_active; backward the five upstream gradients, grad_emb, up_active
    if (outs.size() != (backward ? 7u : 5u)) throw std::invalid_argument("pixel_terms: wrong number of outputs");
    L::LossTermsArgs<T> a;
    a.emb = cp<T>(emb), a.emb_g = cp<T>(emb_g), a.slot = cp<int64_t>(slot), a.inst_pix = cp<int64_t>(inst_pix);
    a.unlabeled_push = unlabeled_push, a.cons_pix = cp<int64_t>(cons_pix), a.n_cons = cp<int64_t>(n_cons);
    a.up_active = mp<uint8_t>(outs.back());
    a.B = B, a.D = D, a.N = N, a.C = C, a.K = K;
    a.h = static_cast<T>(h), a.delta_v = static_cast<T>(delta_v), a.delta_d = static_cast<T>(delta_d);
    if (backward)
        L::loss_terms_backward<T>(a, cp<T>(means), cp<T>(counts), cp<T>(outs[0]), cp<T>(outs[1]), cp<T>(outs[2]),
                                  cp<T>(outs[3]), cp<T>(outs[4]), mp<T>(outs[5]), threads);
    else
        L::loss_terms_forward<T>(a, mp<T>(means), mp<T>(counts), mp<T>(outs[0]), mp<T>(outs[1]), mp<T>(outs[2]),
                                 mp<T>(outs[3]), threads);
}

}  // namespace

void anchor_pixel(int term, bool backward, bool dbl, uintptr_t emb, uintptr_t anchors, uintptr_t emb_g,
                  uintptr_t anchors_g, uintptr_t slot, uintptr_t weight, uintptr_t n_valid, int64_t B, int64_t D,
                  int64_t N, int64_t K, double h, double delta, uintptr_t out, uintptr_t grad_out,
                  uintptr_t grad_emb, uintptr_t grad_anchors, int threads) {
    if (dbl)
        anchor_pixel_t<double>(term, backward, emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N, K, h,
                               delta, out, grad_out, grad_emb, grad_anchors, threads);
    else
        anchor_pixel_t<float>(term, backward, emb, anchors, emb_g, anchors_g, slot, weight, n_valid, B, D, N, K, h,
                              delta, out, grad_out, grad_emb, grad_anchors, threads);
}

void segment_sum(bool dbl, uintptr_t emb, uintptr_t slot, int64_t B, int64_t D, int64_t N, int64_t C, uintptr_t sums,
                 uintptr_t counts, int threads) {
    if (dbl)
        L::segment_sum(cp<double>(emb), cp<int64_t>(slot), B, D, N, C, mp<double>(sums), mp<double>(counts), threads);
    else
        L::segment_sum(cp<float>(emb), cp<int64_t>(slot), B, D, N, C, mp<float>(sums), mp<float>(counts), threads);
}

void segment_sum_backward(bool dbl, uintptr_t grad_sums, uintptr_t slot, int64_t B, int64_t D, int64_t N, int64_t C,
                          uintptr_t grad_emb, int threads) {
    if (dbl)
        L::segment_broadcast(cp<double>(grad_sums), cp<int64_t>(slot), B, D, N, C, mp<double>(grad_emb), false,
                             threads);
    else
        L::segment_broadcast(cp<float>(grad_sums), cp<int64_t>(slot), B, D, N, C, mp<float>(grad_emb), false, threads);
}

void pull_sums(bool dbl, uintptr_t emb, uintptr_t means, uintptr_t slot, int64_t B, int64_t D, int64_t N, int64_t C,
               double delta_v, uintptr_t out, uintptr_t grad, uintptr_t grad_emb, uintptr_t grad_means, int threads) {
    if (dbl)
        L::pull_sums(cp<double>(emb), cp<double>(means), cp<int64_t>(slot), B, D, N, C, delta_v, mp<double>(out),
                     cp<double>(grad), mp<double>(grad_emb), mp<double>(grad_means), threads);
    else
        L::pull_sums(cp<float>(emb), cp<float>(means), cp<int64_t>(slot), B, D, N, C, static_cast<float>(delta_v),
                     mp<float>(out), cp<float>(grad), mp<float>(grad_emb), mp<float>(grad_means), threads);
}

void pixel_terms(bool backward, bool dbl, uintptr_t emb, uintptr_t emb_g, uintptr_t slot, uintptr_t inst_pix,
                 bool unlabeled_push, uintptr_t cons_pix, uintptr_t n_cons, int64_t B, int64_t D, int64_t N, int64_t C,
                 int64_t K, double h, double delta_v, double delta_d, uintptr_t means, uintptr_t counts,
                 const std::vector<uintptr_t>& outs, int threads) {
    if (dbl)
        pixel_terms_t<double>(backward, emb, emb_g, slot, inst_pix, unlabeled_push, cons_pix, n_cons, B, D, N, C, K, h,
                              delta_v, delta_d, means, counts, outs, threads);
    else
        pixel_terms_t<float>(backward, emb, emb_g, slot, inst_pix, unlabeled_push, cons_pix, n_cons, B, D, N, C, K, h,
                             delta_v, delta_d, means, counts, outs, threads);
}

void consistency_anchors(bool dbl, uintptr_t emb_f, uintptr_t emb_g, uintptr_t unlabeled, uintptr_t keys, int64_t B,
                         int64_t D, int64_t N, int64_t K, double delta_v, double coverage_stop, uintptr_t pix,
                         uintptr_t valid, int threads) {
    if (dbl)
        L::consistency_anchors(cp<double>(emb_f), cp<double>(emb_g), cp<uint8_t>(unlabeled), cp<double>(keys), B, D,
                               N, K, delta_v * delta_v, coverage_stop, mp<int64_t>(pix), mp<uint8_t>(valid), threads);
    else
        L::consistency_anchors(cp<float>(emb_f), cp<float>(emb_g), cp<uint8_t>(unlabeled), cp<double>(keys), B, D, N,
                               K, static_cast<float>(delta_v * delta_v), coverage_stop, mp<int64_t>(pix),
                               mp<uint8_t>(valid), threads);
}

bool all_finite(bool dbl, uintptr_t x, int64_t n, int threads) {
    return dbl ? L::all_finite(cp<double>(x), n, threads) : L::all_finite(cp<float>(x), n, threads);
}

SlotsResult cluster_slots(uintptr_t target, uintptr_t keys, int64_t B, int64_t N, int64_t ignore, bool sparse,
                          uintptr_t slot, int threads) {
    L::ClusterSlots r = L::cluster_slots(cp<int64_t>(target), cp<double>(keys), B, N, ignore, sparse,
                                         mp<int64_t>(slot), threads);
    SlotsResult out;
    out.C = r.C, out.negative = r.negative, out.labels = std::move(r.labels), out.pix = std::move(r.pix);
    return out;
}

}  // namespace spoco::loss_cpu::SPOCO_LOSS_ISA
