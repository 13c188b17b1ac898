// One instruction-set variant of the CPU loss kernels (see loss_cpu_entry.hpp); the
// build compiles this file with -DSPOCO_LOSS_ISA=generic|avx2|avx512 and matching flags.
// All variants compute bit-identical results: no FMA contraction, fixed summation order.
#include "bindings/loss_cpu_entry.hpp"
#include "bindings/pointers.hpp"

#include <stdexcept>
#include <string>
#include <type_traits>

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
    auto run = [&](auto tag) {
        constexpr int TERM = decltype(tag)::value;
        if (backward)
            L::anchor_pixel_sums_backward<TERM, T>(a, cp<T>(grad_out), mp<T>(grad_emb), mp<T>(grad_anchors), threads);
        else
            L::anchor_pixel_sums<TERM, T>(a, mp<T>(out), threads);
    };
    switch (term) {
        case L::kSoftMask: run(std::integral_constant<int, L::kSoftMask>{}); break;
        case L::kUnlabeledPush: run(std::integral_constant<int, L::kUnlabeledPush>{}); break;
        case L::kConsistency: run(std::integral_constant<int, L::kConsistency>{}); break;
        default: throw std::invalid_argument("unknown anchor x pixel term " + std::to_string(term));
    }
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
        L::segment_sum_backward(cp<double>(grad_sums), cp<int64_t>(slot), B, D, N, C, mp<double>(grad_emb), threads);
    else
        L::segment_sum_backward(cp<float>(grad_sums), cp<int64_t>(slot), B, D, N, C, mp<float>(grad_emb), threads);
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

namespace {
template <class T>
void anchor_terms_backward_t(const std::vector<int64_t>& terms, const std::vector<uintptr_t>& ptrs,
                             const std::vector<int64_t>& Ks, const std::vector<double>& hs,
                             const std::vector<double>& deltas, uintptr_t emb, int64_t B, int64_t D, int64_t N,
                             uintptr_t grad_emb, int threads) {
    constexpr size_t per = 8;  // anchors, anchors_g, emb_g, slot, weight, n_valid, grad_out, grad_anchors
    const size_t n = terms.size();
    if (n == 0 || ptrs.size() != per * n || Ks.size() != n || hs.size() != n || deltas.size() != n)
        throw std::invalid_argument("anchor_terms_backward: inconsistent term lists");
    std::vector<L::TermGrad<T>> tg(n);
    for (size_t i = 0; i < n; ++i) {
        const uintptr_t* q = ptrs.data() + per * i;
        L::AnchorPixelArgs<T>& a = tg[i].a;
        tg[i].term = static_cast<int>(terms[i]);
        if (tg[i].term < L::kSoftMask || tg[i].term > L::kConsistency)
            throw std::invalid_argument("anchor_terms_backward: unknown term");
        a.emb = cp<T>(emb), a.anchors = cp<T>(q[0]), a.anchors_g = cp<T>(q[1]), a.emb_g = cp<T>(q[2]);
        a.slot = cp<int64_t>(q[3]), a.weight = cp<T>(q[4]), a.n_valid = cp<int64_t>(q[5]);
        a.B = B, a.D = D, a.N = N, a.K = Ks[i], a.h = static_cast<T>(hs[i]), a.delta = static_cast<T>(deltas[i]);
        tg[i].grad_out = cp<T>(q[6]), tg[i].grad_anchors = mp<T>(q[7]);
    }
    L::anchor_pixel_terms_backward<T>(tg.data(), static_cast<int>(n), mp<T>(grad_emb), threads);
}
}  // namespace

void anchor_terms_backward(bool dbl, const std::vector<int64_t>& terms, const std::vector<uintptr_t>& ptrs,
                           const std::vector<int64_t>& Ks, const std::vector<double>& hs,
                           const std::vector<double>& deltas, uintptr_t emb, int64_t B, int64_t D, int64_t N,
                           uintptr_t grad_emb, int threads) {
    if (dbl)
        anchor_terms_backward_t<double>(terms, ptrs, Ks, hs, deltas, emb, B, D, N, grad_emb, threads);
    else
        anchor_terms_backward_t<float>(terms, ptrs, Ks, hs, deltas, emb, B, D, N, grad_emb, threads);
}

}  // namespace spoco::loss_cpu::SPOCO_LOSS_ISA
