// CPU kernels of the SPOCO loss reductions (Sec. 3.1-3.2): memory O(B N D + B K D),
// no (K, N) mask. The anchor x pixel terms and the pull term run in one pass over
// the pixels (loss_pass.hpp); this file adds the segment sums, the fused loss
// reductions built on that pass (loss_terms_forward/backward), the consistency
// anchors, the cluster slots and the input checks.
//
// Layouts (all C-contiguous): embeddings (B, D, N), anchors/means (B, K, D), slot
// (B, N) int64, n_valid (B,): anchors k >= n_valid[b] of image b are skipped (their
// outputs are 0). Reductions add per-tile partials in tile order: results are
// bit-identical for any number of threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/common.hpp"
#include "core/loss_pass.hpp"
#include "core/loss_terms.hpp"

namespace spoco::loss {
inline namespace SPOCO_LOSS_ISA {

/// Arguments of a single anchor x pixel term (the spoco::anchor_pixel_sums op).
template <class T>
struct AnchorPixelArgs {
    const T* emb = nullptr;        ///< (B, D, N) pixel embeddings e
    const T* anchors = nullptr;    ///< (B, K, D) anchors a_k
    const T* emb_g = nullptr;      ///< (B, D, N) g-embeddings (consistency only)
    const T* anchors_g = nullptr;  ///< (B, K, D) g-anchors (consistency only)
    const int64_t* slot = nullptr; ///< (B, N) object slot of each pixel (soft mask only)
    const T* weight = nullptr;     ///< (B, N) pixel weights, null = 1
    const int64_t* n_valid = nullptr;  ///< (B,) anchors in use per image
    int64_t B = 0, D = 0, N = 0, K = 0;
    T h = T(0), delta = T(0);      ///< 1/(2 sigma^2) and the unlabeled-push margin
};

/// Forward sums of one term, out (n_out, B, K), or (grad_out given) its gradients
/// grad_emb (B, D, N) and grad_anchors (B, K, D), either may be null.
template <class T>
void anchor_pixel_sums(int term, const AnchorPixelArgs<T>& a, T* out, const T* grad_out, T* grad_emb, T* grad_anchors,
                       int threads) {
    if (term < kSoftMask || term > kConsistency) throw std::invalid_argument("unknown anchor x pixel term");
    PixelSet<T> px;
    px.emb = a.emb, px.emb_g = a.emb_g, px.slot = a.slot, px.weight = a.weight, px.B = a.B, px.D = a.D, px.N = a.N;
    px.grad_emb = grad_emb;
    TermSet<T> ts;
    ts.term = term, ts.anchors = a.anchors, ts.anchors_g = a.anchors_g, ts.n_valid = a.n_valid, ts.K = a.K;
    ts.h = a.h, ts.delta = a.delta, ts.out = out, ts.grad_out = grad_out, ts.grad_anchors = grad_anchors;
    pixel_pass(px, &ts, 1, grad_out != nullptr, threads);
}

/// Pull sums (Eq. 1): out (B, C) = sum over the pixels of slot k of [|mu_k - e_i| - delta_v]_+^2.
/// With grad (B, C) given, computes instead grad_emb (B, D, N) and grad_means (B, C, D)
/// (either may be null) of sum_k grad_k out_k.
template <class T>
void pull_sums(const T* emb, const T* means, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C,
               T delta_v, T* out, const T* grad, T* grad_emb, T* grad_means, int threads) {
    PixelSet<T> px;
    px.emb = emb, px.slot = slot, px.B = B, px.D = D, px.N = N, px.C = C, px.means = means, px.delta_v = delta_v;
    px.pull_out = out, px.pull_grad = grad, px.pull_grad_means = grad_means, px.grad_emb = grad_emb;
    pixel_pass<T>(px, nullptr, 0, grad != nullptr, threads);
}

namespace detail {

/// Calls fn(p0, len, s) for the runs of equal slot s in [0, C) among pixels [begin, end)
/// of one image (runs cut at kSub pixels). Labels are spatially coherent, so runs are
/// long: per-slot work is vectorised along a run and needs no gather or scatter.
template <class F>
inline void for_each_slot_run(const int64_t* slot, int64_t begin, int64_t end, int64_t C, F&& fn) {
    int64_t p = begin;
    while (p < end) {
        const int64_t s = slot[p];
        int64_t q = p + 1;
        while (q < end && q - p < kSub && slot[q] == s) ++q;
        if (s >= 0 && s < C) fn(p, q - p, s);
        p = q;
    }
}

}  // namespace detail

/// Per-slot sums of the embeddings and pixel counts: sums (B, C, D), counts (B, C).
/// Pixels with slot outside [0, C) belong to no slot.
template <class T>
void segment_sum(const T* emb, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C, T* sums, T* counts,
                 int threads) {
    detail::check_dims(B, D, N, C);
    threads = resolve_threads(threads);
    const int64_t tile = pass_tile(C), n_tiles = (N + tile - 1) / tile, per = C * (D + 1);
    std::vector<double> part(static_cast<size_t>(B * n_tiles * per), 0.0);  // [b][t][c][d | count]
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t task = 0; task < B * n_tiles; ++task) {
        const int64_t b = task / n_tiles, t = task % n_tiles;
        double* acc = part.data() + task * per;
        detail::for_each_slot_run(slot + b * N, t * tile, std::min(N, (t + 1) * tile), C,
                                  [&](int64_t p, int64_t len, int64_t s) {
                                      for (int64_t d = 0; d < D; ++d)
                                          acc[s * (D + 1) + d] += detail::run_sum(emb + (b * D + d) * N + p, len);
                                      acc[s * (D + 1) + D] += static_cast<double>(len);
                                  });
    }
    std::vector<double> tot(static_cast<size_t>(B * per));
    detail::combine_tiles(part, B, n_tiles, per, tot.data(), threads);
    for (int64_t bc = 0; bc < B * C; ++bc) {
        for (int64_t d = 0; d < D; ++d) sums[bc * D + d] = static_cast<T>(tot[bc * (D + 1) + d]);
        counts[bc] = static_cast<T>(tot[bc * (D + 1) + D]);
    }
}

/// grad_emb[b, :, i] (+)= grad_sums[b, slot_i, :] for pixels of a slot in [0, C): the gradient
/// of segment_sum (accumulate = false: other pixels get 0; true: they are left as they are).
template <class T>
void segment_broadcast(const T* grad_sums, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C,
                       T* grad_emb, bool accumulate, int threads) {
    threads = resolve_threads(threads);
    constexpr int64_t block = 1 << 14;
    const int64_t n_blocks = (N + block - 1) / block;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < B * n_blocks; ++task) {
        const int64_t b = task / n_blocks, p0 = (task % n_blocks) * block, p1 = std::min(N, p0 + block);
        if (!accumulate)
            for (int64_t d = 0; d < D; ++d)
                std::fill(grad_emb + (b * D + d) * N + p0, grad_emb + (b * D + d) * N + p1, T(0));
        detail::for_each_slot_run(slot + b * N, p0, p1, C, [&](int64_t p, int64_t len, int64_t s) {
            for (int64_t d = 0; d < D; ++d) {
                const T g = grad_sums[(b * C + s) * D + d];
                T* dst = grad_emb + (b * D + d) * N + p;
                if (accumulate)
                    for (int64_t q = 0; q < len; ++q) dst[q] += g;
                else
                    for (int64_t q = 0; q < len; ++q) dst[q] = g;
            }
        });
    }
}

/// Inputs of the fused loss reductions (the spoco::pixel_terms op).
template <class T>
struct LossTermsArgs {
    const T* emb = nullptr;             ///< (B, D, N) f-embeddings
    const T* emb_g = nullptr;           ///< (B, D, N) g-embeddings, or null (no consistency term)
    const int64_t* slot = nullptr;      ///< (B, N): [0, C) cluster, C counted in no cluster, else ignored
    const int64_t* inst_pix = nullptr;  ///< (B, C) instance anchor pixels, or null: the means are the anchors
    bool unlabeled_push = false;        ///< Eq. 6 between the means and the pixels of slot C
    const int64_t* cons_pix = nullptr;  ///< (B, K) consistency anchor pixels (with emb_g)
    const int64_t* n_cons = nullptr;    ///< (B,) consistency anchors in use
    uint8_t* up_active = nullptr;       ///< (B, C, ceil(N / kSub)) or null: the forward marks the (mean, pixel
                                        ///< block) pairs of Eq. 6 with a non-zero hinge, the backward skips the rest
    int64_t B = 0, D = 0, N = 0, C = 0, K = 0;
    T h = T(0), delta_v = T(0), delta_d = T(0);  ///< 1/(2 sigma^2), pull and push margins
};

namespace detail {

/// Ask for transparent huge pages for a large output buffer that is about to be written
/// for the first time (no-op where unsupported): the first touch of a fresh 50 MB gradient
/// otherwise costs ~12k page faults, as much time as writing it.
inline void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr uintptr_t huge = uintptr_t(1) << 21;
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(huge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
    (void)p, (void)bytes;
#endif
}

/// The pass of a loss call: its pixels (with the pull term) and its anchor x pixel terms,
/// with the anchors taken at pixels gathered here.
template <class T>
struct LossTermsSetup {
    std::vector<int64_t> n_obj;  ///< (B,) 1 + the last non-empty slot
    std::vector<T> inst_a, cons_f, cons_g;
    PixelSet<T> px;
    std::vector<TermSet<T>> terms;  ///< instance, [unlabeled push], [consistency]
};

template <class T>
void gather_pixels(const T* emb, const int64_t* pix, int64_t B, int64_t D, int64_t N, int64_t K, std::vector<T>& out) {
    out.resize(static_cast<size_t>(B * K * D));
    for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < K; ++k) {
            const int64_t p = pix[b * K + k];
            if (p < 0 || p >= N) throw std::invalid_argument("spoco loss kernels: anchor pixel index out of range");
            for (int64_t d = 0; d < D; ++d) out[(b * K + k) * D + d] = emb[(b * D + d) * N + p];
        }
}

template <class T>
LossTermsSetup<T> loss_terms_setup(const LossTermsArgs<T>& a, const T* means, const T* counts) {
    const int64_t B = a.B, D = a.D, N = a.N, C = a.C, K = a.K;
    check_dims(B, D, N, C);
    check_dims(B, D, N, K);
    LossTermsSetup<T> st;
    st.n_obj.assign(static_cast<size_t>(B), 0);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < C; ++k)
            if (counts[b * C + k] > T(0)) st.n_obj[b] = k + 1;
    PixelSet<T>& px = st.px;
    px.emb = a.emb, px.emb_g = a.emb_g, px.slot = a.slot, px.weights_from_slot = true;
    px.B = B, px.D = D, px.N = N, px.C = C, px.means = means, px.delta_v = a.delta_v;
    TermSet<T> inst;
    inst.term = kSoftMask, inst.n_valid = st.n_obj.data(), inst.K = C, inst.h = a.h;
    if (a.inst_pix) {
        gather_pixels(a.emb, a.inst_pix, B, D, N, C, st.inst_a);
        inst.anchors = st.inst_a.data();
    } else {
        inst.anchors = means;
    }
    st.terms.push_back(inst);
    if (a.unlabeled_push) {
        TermSet<T> up;
        up.term = kUnlabeledPush, up.anchors = means, up.n_valid = st.n_obj.data(), up.K = C, up.delta = a.delta_d;
        up.on_unlabeled = true, up.active = a.up_active, up.n_blocks = (N + kSub - 1) / kSub;
        st.terms.push_back(up);
    }
    if (a.cons_pix) {
        if (!a.emb_g || !a.n_cons) throw std::invalid_argument("spoco loss kernels: consistency needs emb_g and n_cons");
        gather_pixels(a.emb, a.cons_pix, B, D, N, K, st.cons_f);
        gather_pixels(a.emb_g, a.cons_pix, B, D, N, K, st.cons_g);
        TermSet<T> cons;
        cons.term = kConsistency, cons.anchors = st.cons_f.data(), cons.anchors_g = st.cons_g.data();
        cons.n_valid = a.n_cons, cons.K = K, cons.h = a.h;
        st.terms.push_back(cons);
    }
    return st;
}

}  // namespace detail

/// Forward of the fused loss reductions: means (B, C, D) = per-slot sums / max(count, 1),
/// counts (B, C), pull (B, C) (Eq. 1 summed per slot), inst (2, B, C) (soft-mask Dice sums,
/// Eq. 3-4), up (1, B, C) (Eq. 6 summed over the unlabeled pixels; unused without
/// unlabeled_push) and cons (3, B, K) (Eq. 7 Dice sums; unused without cons_pix).
/// Slots after an image's last non-empty slot give 0.
template <class T>
void loss_terms_forward(const LossTermsArgs<T>& a, T* means, T* counts, T* pull, T* inst, T* up, T* cons,
                        int threads) {
    const int64_t B = a.B, D = a.D, C = a.C;
    segment_sum(a.emb, a.slot, B, D, a.N, C, means, counts, threads);
    for (int64_t bc = 0; bc < B * C; ++bc) {
        const T n = std::max(counts[bc], T(1));
        for (int64_t d = 0; d < D; ++d) means[bc * D + d] /= n;
    }
    detail::LossTermsSetup<T> st = detail::loss_terms_setup(a, means, counts);
    st.px.pull_out = pull;
    size_t i = 0;
    st.terms[i++].out = inst;
    if (a.unlabeled_push) st.terms[i++].out = up;
    if (a.cons_pix) st.terms[i++].out = cons;
    pixel_pass(st.px, st.terms.data(), static_cast<int>(st.terms.size()), false, threads);
}

/// Backward of loss_terms_forward: grad_emb (B, D, N) (every element written) for the
/// upstream gradients of means (B, C, D), pull (B, C), inst (2, B, C), up (1, B, C) and
/// cons (3, B, K) (those of absent terms are not read). One compute pass gives every
/// anchor x pixel and pull gradient and the gradients of all anchors; the gradient that
/// reaches the means (from outside, the pull, the unlabeled push and mean anchors) then
/// goes to the pixels of each slot in one memory-bound pass, and that of anchors taken
/// at pixels to those pixels.
template <class T>
void loss_terms_backward(const LossTermsArgs<T>& a, const T* means, const T* counts, const T* grad_means,
                         const T* grad_pull, const T* grad_inst, const T* grad_up, const T* grad_cons, T* grad_emb,
                         int threads) {
    const int64_t B = a.B, D = a.D, N = a.N, C = a.C, K = a.K;
    detail::LossTermsSetup<T> st = detail::loss_terms_setup(a, means, counts);
    std::vector<T> ga_inst(static_cast<size_t>(B * C * D)), ga_up(static_cast<size_t>(B * C * D), T(0));
    std::vector<T> ga_cons(static_cast<size_t>(B * K * D)), gm_pull(static_cast<size_t>(B * C * D));
    st.px.pull_grad = grad_pull, st.px.pull_grad_means = gm_pull.data(), st.px.grad_emb = grad_emb;
    size_t i = 0;
    st.terms[i].grad_out = grad_inst, st.terms[i++].grad_anchors = ga_inst.data();
    if (a.unlabeled_push) st.terms[i].grad_out = grad_up, st.terms[i++].grad_anchors = ga_up.data();
    if (a.cons_pix) st.terms[i].grad_out = grad_cons, st.terms[i++].grad_anchors = ga_cons.data();
    detail::advise_huge_pages(grad_emb, static_cast<size_t>(B * D * N) * sizeof(T));
    pixel_pass(st.px, st.terms.data(), static_cast<int>(st.terms.size()), true, threads);
    // dL/dsums = dL/dmeans / max(count, 1), with every contribution to dL/dmeans
    std::vector<T> grad_sums(static_cast<size_t>(B * C * D));
    for (int64_t bc = 0; bc < B * C; ++bc) {
        const T n = std::max(counts[bc], T(1));
        for (int64_t d = 0; d < D; ++d) {
            const int64_t j = bc * D + d;
            T g = grad_means[j] + gm_pull[j] + ga_up[j];
            if (!a.inst_pix) g += ga_inst[j];
            grad_sums[j] = g / n;
        }
    }
    segment_broadcast(grad_sums.data(), a.slot, B, D, N, C, grad_emb, true, threads);
    auto scatter = [&](const int64_t* pix, const std::vector<T>& ga, int64_t Kt, const int64_t* n_valid) {
        for (int64_t b = 0; b < B; ++b) {
            const int64_t kb = std::min<int64_t>(Kt, std::max<int64_t>(n_valid[b], 0));
            for (int64_t k = 0; k < kb; ++k)
                for (int64_t d = 0; d < D; ++d) grad_emb[(b * D + d) * N + pix[b * Kt + k]] += ga[(b * Kt + k) * D + d];
        }
    };
    if (a.inst_pix) scatter(a.inst_pix, ga_inst, C, st.n_obj.data());
    if (a.cons_pix) scatter(a.cons_pix, ga_cons, K, a.n_cons);
}

/// Per-image cluster slots of integer labels (spoco::cluster_slots): clusters are the
/// pixels with label != ignore and label >= 0 (sparse: > 0); each image's distinct
/// cluster labels get slots 0, 1, ... in ascending order.
struct ClusterSlots {
    int64_t C = 1;                ///< slots per image: the most clusters of an image, at least 1
    bool negative = false;        ///< some label is negative and not ignore (nothing else is written)
    std::vector<int64_t> labels;  ///< (B, C) label of each slot, -1 where unused
    std::vector<int64_t> pix;     ///< (B, C) with keys: the pixel of largest key (ties: lowest index) of each slot
};

/// Writes slot (B, N): the pixel's slot, C for counted pixels in no cluster (sparse: label 0),
/// -1 for ignored ones. keys (B, N) or null (no anchors drawn).
inline ClusterSlots cluster_slots(const int64_t* target, const double* keys, int64_t B, int64_t N, int64_t ignore,
                                  bool sparse, int64_t* slot, int threads) {
    threads = resolve_threads(threads);
    std::vector<std::vector<int64_t>> ids(static_cast<size_t>(B));
    std::vector<char> neg(static_cast<size_t>(B), 0);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {  // distinct labels, one entry per run of equal labels
        const int64_t* lab = target + b * N;
        std::vector<int64_t>& v = ids[b];
        bool have = false;
        int64_t prev = 0;
        for (int64_t p = 0; p < N; ++p) {
            const int64_t l = lab[p];
            if (have && l == prev) continue;
            have = true, prev = l;
            if (l == ignore) continue;
            if (l < 0) neg[b] = 1;
            else if (!sparse || l > 0) v.push_back(l);
        }
        std::sort(v.begin(), v.end());
        v.erase(std::unique(v.begin(), v.end()), v.end());
    }
    ClusterSlots r;
    for (int64_t b = 0; b < B; ++b) {
        r.negative |= neg[b] != 0;
        r.C = std::max<int64_t>(r.C, static_cast<int64_t>(ids[b].size()));
    }
    if (r.negative) return r;
    const int64_t C = r.C;
    r.labels.assign(static_cast<size_t>(B * C), -1);
    if (keys) r.pix.assign(static_cast<size_t>(B * C), 0);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
        const int64_t* lab = target + b * N;
        const std::vector<int64_t>& v = ids[b];
        std::copy(v.begin(), v.end(), r.labels.begin() + b * C);
        std::vector<double> best(v.size(), -std::numeric_limits<double>::infinity());
        int64_t prev = 0, prev_slot = -1;
        bool have = false;
        for (int64_t p = 0; p < N; ++p) {
            const int64_t l = lab[p];
            if (!have || l != prev) {
                have = true, prev = l;
                if (l == ignore) prev_slot = -1;
                else if (sparse && l == 0) prev_slot = C;
                else prev_slot = std::lower_bound(v.begin(), v.end(), l) - v.begin();
            }
            slot[b * N + p] = prev_slot;
            if (keys && prev_slot >= 0 && prev_slot < C && keys[b * N + p] > best[prev_slot]) {
                best[prev_slot] = keys[b * N + p];
                r.pix[b * C + prev_slot] = p;
            }
        }
    }
    return r;
}

/// Coverage-driven consistency anchors (Eq. 7) of every image: anchor j is the pixel
/// of largest key (ties: lowest index) among the unlabeled pixels not yet within
/// sqrt(r2) of an earlier anchor in f or in g; an image stops once fewer than
/// coverage_stop * |U| (or no) unlabeled pixels are uncovered, or after K anchors.
/// Writes pix (B, K) (0 where no anchor) and valid (B, K) (a prefix of ones).
///
/// Same result as K coverage passes, with one: scanning the unlabeled pixels by
/// decreasing key, a pixel is the next anchor exactly when no anchor found so far
/// covers it (coverage only grows). Only the first few candidates are sorted (partial
/// sorts of growing batches); then one pass finds, for every unlabeled pixel, the
/// first anchor that covers it, which gives the uncovered count after each anchor.
template <class T>
void consistency_anchors(const T* emb_f, const T* emb_g, const uint8_t* unlabeled, const double* keys, int64_t B,
                         int64_t D, int64_t N, int64_t K, T r2, double coverage_stop, int64_t* pix, uint8_t* valid,
                         int threads) {
    detail::check_dims(B, D, N, K);
    if (K >= INT32_MAX) throw std::invalid_argument("spoco loss kernels: need fewer than 2^31 consistency anchors");
    threads = resolve_threads(threads);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
        const T* ef = emb_f + b * D * N;
        const T* eg = emb_g + b * D * N;
        const double* kb = keys + b * N;
        const uint8_t* ub = unlabeled + b * N;
        for (int64_t j = 0; j < K; ++j) pix[b * K + j] = 0, valid[b * K + j] = 0;
        std::vector<int64_t> cand;
        for (int64_t i = 0; i < N; ++i)
            if (ub[i]) cand.push_back(i);
        const int64_t n_u = static_cast<int64_t>(cand.size());
        if (n_u == 0) continue;
        auto near = [&](int64_t i, int64_t p) {  // the same sums as the pass below
            T df = 0, dg = 0;
            for (int64_t d = 0; d < D; ++d) {
                const T x = ef[d * N + i] - ef[d * N + p], y = eg[d * N + i] - eg[d * N + p];
                df += x * x;
                dg += y * y;
            }
            return df <= r2 || dg <= r2;
        };
        auto before = [&](int64_t x, int64_t y) { return kb[x] > kb[y] || (kb[x] == kb[y] && x < y); };
        std::vector<int64_t> found;
        for (int64_t begin = 0, batch = 4 * K; begin < n_u && static_cast<int64_t>(found.size()) < K; batch *= 2) {
            const int64_t end = std::min(n_u, begin + batch);
            std::partial_sort(cand.begin() + begin, cand.begin() + end, cand.end(), before);
            for (int64_t c = begin; c < end && static_cast<int64_t>(found.size()) < K; ++c) {
                bool covered = false;
                for (int64_t p : found)
                    if (near(cand[c], p)) {
                        covered = true;
                        break;
                    }
                if (!covered) found.push_back(cand[c]);
            }
            begin = end;
        }
        // First covering anchor of every unlabeled pixel, by blocks of kSub pixels: each block is
        // loaded once (zero-padded) and its distances to an anchor summed in registers.
        const int64_t n_a = static_cast<int64_t>(found.size());
        std::vector<int64_t> newly(static_cast<size_t>(n_a + 1), 0);
        std::vector<T> anchor_f(static_cast<size_t>(n_a * D)), anchor_g(anchor_f.size());
        for (int64_t a = 0; a < n_a; ++a)
            for (int64_t d = 0; d < D; ++d) {
                anchor_f[a * D + d] = ef[d * N + found[a]];
                anchor_g[a * D + d] = eg[d * N + found[a]];
            }
        auto blk = std::make_unique<detail::PixelBlock<T>>();
        alignas(64) T df[kSub], dg[kSub];
        alignas(64) int32_t first[kSub];  // n_a: not covered yet, -1: not unlabeled (or padding)
        const int32_t none = static_cast<int32_t>(n_a);
        for (int64_t i0 = 0; i0 < N; i0 += kSub) {
            const int64_t np = std::min(kSub, N - i0);
            int64_t open = 0;
            for (int64_t q = 0; q < kSub; ++q) {
                first[q] = q < np && ub[i0 + q] ? none : -1;
                open += first[q] == none;
            }
            if (open == 0) continue;
            blk->load_embeddings(ef, eg, D, N, i0, np);
            for (int32_t a = 0; a < none && open > 0; ++a) {
                detail::block_sq_dist(blk->e, anchor_f.data() + a * D, D, df);
                detail::block_sq_dist(blk->eg, anchor_g.data() + a * D, D, dg);
                int32_t hits = 0;
                for (int64_t q = 0; q < kSub; ++q) {  // branch-free, so that it vectorises
                    const bool hit = (first[q] == none) & ((df[q] <= r2) | (dg[q] <= r2));
                    first[q] = hit ? a : first[q];
                    hits += hit;
                }
                open -= hits;
            }
            for (int64_t q = 0; q < np; ++q)
                if (first[q] >= 0) ++newly[static_cast<size_t>(first[q])];
        }
        int64_t left = n_u;
        const double thr = coverage_stop * static_cast<double>(n_u);
        for (int64_t j = 0; j < std::min(K, n_a); ++j) {
            if (left == 0 || static_cast<double>(left) < thr) break;
            pix[b * K + j] = found[j];
            valid[b * K + j] = 1;
            left -= newly[j];
        }
    }
}

/// Whether all n values are finite (x - x == 0 fails exactly for NaN and +-inf).
template <class T>
bool all_finite(const T* x, int64_t n, int threads) {
    threads = resolve_threads(threads);
    constexpr int64_t block = 1 << 14;
    int bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : bad)
    for (int64_t i0 = 0; i0 < n; i0 += block) {
        int local = 0;
        const int64_t i1 = std::min(n, i0 + block);
        for (int64_t i = i0; i < i1; ++i) local |= !(x[i] - x[i] == T(0));
        bad |= local;
    }
    return bad == 0;
}

}  // namespace SPOCO_LOSS_ISA
}  // namespace spoco::loss
