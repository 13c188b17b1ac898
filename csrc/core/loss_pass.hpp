// One pass over the pixels of a batch for any set of anchor x pixel terms (Eq. 3-4,
// 6, 7) and the own-cluster pull term (Eq. 1): the forward sums, or in the backward
// direction dL/de (B, D, N) written once and dL/da per anchor. Every pixel block is
// loaded once for all terms.
//
// Layouts (all C-contiguous): embeddings (B, D, N), anchors/means (B, K, D), slot
// (B, N) int64, per-anchor outputs (n_out, B, K).
//
// Determinism: pixels are cut into tiles whose size depends only on the numbers of
// anchors (pass_tile); each (image, tile) task keeps its own partial sums (double,
// refreshed from float lane sums every kFlush pixels) and the partials are added in
// tile order. Results are therefore bit-identical for any number of threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "core/common.hpp"
#include "core/loss_simd.hpp"
#include "core/loss_terms.hpp"

namespace spoco::loss {
inline namespace SPOCO_LOSS_ISA {

constexpr int64_t kSub = 128;       ///< pixels per inner block (kept in L1 and registers)
constexpr int64_t kFlush = 4096;    ///< pixels between flushes of the float lane sums into double
constexpr int64_t kMinTile = 1024;  ///< smallest reduction tile (pixels)
constexpr int64_t kMaxDim = 64;     ///< largest embedding dimension D
constexpr int64_t kRowChunk = 32;   ///< anchors whose coefficient rows a backward block keeps at once

/// Pixels per tile: a function of the anchor count only (never of the thread count), at
/// least 16 pixels per anchor so that the per-tile partial sums (tiles x anchors x D
/// doubles) stay below 1/8 of the embeddings, whatever the number of objects.
inline int64_t pass_tile(int64_t n_anchors) {
    int64_t tile = kMinTile;
    while (tile < 16 * n_anchors) tile *= 2;
    return tile;
}

/// One anchor x pixel term of a pass (the maths is term_values / term_coef of loss_terms.hpp).
template <class T>
struct TermSet {
    int term = kSoftMask;
    const T* anchors = nullptr;        ///< (B, K, D) a_k
    const T* anchors_g = nullptr;      ///< (B, K, D) g-anchors (consistency)
    const int64_t* n_valid = nullptr;  ///< (B,) anchors k >= n_valid[b] are skipped (their outputs are 0)
    int64_t K = 0;
    T h = T(0), delta = T(0);          ///< 1/(2 sigma^2) and the unlabeled-push margin
    bool on_unlabeled = false;         ///< weigh pixels by "in slot C" (the unlabeled region), not by w
    uint8_t* active = nullptr;         ///< (B, K, n_blocks) or null: the forward writes whether any value of
                                       ///< (anchor, pixel block) is non-zero; the backward skips the others
    int64_t n_blocks = 0;              ///< pixel blocks per image, ceil(N / kSub)
    T* out = nullptr;                  ///< forward: (n_out, B, K)
    const T* grad_out = nullptr;       ///< backward: upstream gradient (n_out, B, K)
    T* grad_anchors = nullptr;         ///< backward: dL/da (B, K, D), or null
};

/// The pixels of a pass and the pull term on them.
template <class T>
struct PixelSet {
    const T* emb = nullptr;          ///< (B, D, N) pixel embeddings e
    const T* emb_g = nullptr;        ///< (B, D, N) g-embeddings (consistency terms only)
    const int64_t* slot = nullptr;   ///< (B, N) slot of each pixel (anything outside [0, 2^31) = none)
    const T* weight = nullptr;       ///< (B, N) pixel weights; null: see weights_from_slot
    bool weights_from_slot = false;  ///< without weight: w = [0 <= slot <= C] (else w = 1)
    int64_t B = 0, D = 0, N = 0;
    int64_t C = 0;                   ///< slots [0, C) are clusters, slot C = counted in none (unlabeled)
    const T* means = nullptr;        ///< (B, C, D) cluster means: the pull term (Eq. 1), or null
    T delta_v = T(0);
    T* pull_out = nullptr;           ///< forward: (B, C) sum over the pixels of k of [|mu_k - e| - delta_v]_+^2
    const T* pull_grad = nullptr;    ///< backward: upstream gradient (B, C) of pull_out
    T* pull_grad_means = nullptr;    ///< backward: dL/dmu (B, C, D) of the pull term, or null
    T* grad_emb = nullptr;           ///< backward: dL/de (B, D, N), every element written (or null)
};

namespace detail {

inline void check_dims(int64_t B, int64_t D, int64_t N, int64_t K) {
    if (B < 1 || N < 1 || K < 0 || D < 1 || D > kMaxDim)
        throw std::invalid_argument("spoco loss kernels: need B >= 1, N >= 1, K >= 0 and 1 <= D <= 64");
}

/// Prefetch the row segment of the block two blocks after the one at x: the D (or 2D)
/// rows of a block are as many concurrent streams, more than the hardware prefetchers
/// follow. A prefetch past the end of an array is harmless (a hint, never a fault).
template <class X>
inline void prefetch_ahead(const X* x) {
    const char* next = reinterpret_cast<const char*>(x + 2 * kSub);
    for (size_t off = 0; off < kSub * sizeof(X); off += 64) SPOCO_PREFETCH(next + off);
}

/// One block of kSub pixels (zero-padded): embeddings, weights and slots.
template <class T>
struct PixelBlock {
    alignas(64) T e[kMaxDim][kSub];
    alignas(64) T eg[kMaxDim][kSub];
    alignas(64) T w[kSub];        ///< pixel weight (0 for padding)
    alignas(64) T u[kSub];        ///< 1 for pixels of slot C (the unlabeled region), else 0
    alignas(64) int32_t s[kSub];  ///< slot, -1 for none and padding

    /// e (and eg unless emb_g is null) from the pixels [p0, p0 + np) of one image's (D, N)
    /// embeddings, zero-padded to kSub.
    void load_embeddings(const T* emb, const T* emb_g, int64_t D, int64_t N, int64_t p0, int64_t np) {
        for (int64_t d = 0; d < D; ++d) {
            const T* src = emb + d * N + p0;
            prefetch_ahead(src);
            std::copy(src, src + np, e[d]);
            std::fill(e[d] + np, e[d] + kSub, T(0));
            if (emb_g) {
                const T* sg = emb_g + d * N + p0;
                prefetch_ahead(sg);
                std::copy(sg, sg + np, eg[d]);
                std::fill(eg[d] + np, eg[d] + kSub, T(0));
            }
        }
    }

    void load(const PixelSet<T>& px, bool with_g, int64_t b, int64_t p0, int64_t np) {
        const int64_t D = px.D, N = px.N;
        load_embeddings(px.emb + b * D * N, with_g ? px.emb_g + b * D * N : nullptr, D, N, p0, np);
        if (px.slot) prefetch_ahead(px.slot + b * N + p0);
        for (int64_t p = 0; p < kSub; ++p) {
            const int64_t v = (p < np && px.slot) ? px.slot[b * N + p0 + p] : -1;
            s[p] = (v >= 0 && v < INT32_MAX) ? static_cast<int32_t>(v) : -1;
        }
        const int32_t C = static_cast<int32_t>(px.C);
        for (int64_t p = 0; p < kSub; ++p) {
            T wp = T(1);
            if (px.weight) wp = p < np ? px.weight[b * N + p0 + p] : T(0);
            else if (px.weights_from_slot) wp = (s[p] >= 0 && s[p] <= C) ? T(1) : T(0);
            w[p] = p < np ? wp : T(0);
            u[p] = s[p] == C ? T(1) : T(0);
        }
    }
};

/// dist[p] = |e_p - a|^2 for the kSub pixels of a block (direct differences: accurate for nearby pixels).
template <class T>
inline void block_sq_dist(const T (*e)[kSub], const T* a, int64_t D, T* dist) {
    constexpr int64_t W = vec_width<T>(), NV = kSub / W;
    Vec<T> acc[NV];
    for (int64_t j = 0; j < NV; ++j) acc[j] = vsplat(T(0));
    for (int64_t d = 0; d < D; ++d) {
        const Vec<T> ad = vsplat(a[d]);
        for (int64_t j = 0; j < NV; ++j) {
            const Vec<T> t = vload(e[d] + j * W) - ad;
            acc[j] += t * t;
        }
    }
    for (int64_t j = 0; j < NV; ++j) vstore(dist + j * W, acc[j]);
}

/// The kSub values v as one lane vector (vector adds only).
template <class T>
inline Vec<T> block_lanes(const T* v) {
    constexpr int64_t W = vec_width<T>(), NV = kSub / W;
    Vec<T> s = vload(v);
    for (int64_t j = 1; j < NV; ++j) s += vload(v + j * W);
    return s;
}

/// Sum of the lanes of v in a fixed order.
template <class T>
inline double lane_total(const Vec<T>& v) {
    double s = 0;
    for (int64_t l = 0; l < vec_width<T>(); ++l) s += v[l];
    return s;
}

/// Sum of v[0..len) in a fixed order (whole vectors, then the tail), at a cost that grows
/// with len: label runs in 3D are often only a few pixels long.
template <class T>
inline double run_sum(const T* v, int64_t len) {
    constexpr int64_t W = vec_width<T>();
    double s = 0;
    int64_t q = 0;
    if (len >= W) {
        Vec<T> acc = vload(v);
        for (q = W; q + W <= len; q += W) acc += vload(v + q);
        s = lane_total<T>(acc);
    }
    for (; q < len; ++q) s += v[q];
    return s;
}

/// Calls fn(p, len, s) for the runs of equal slot s in [0, C) among the block's pixels.
template <class T, class F>
inline void for_each_run(const PixelBlock<T>& blk, int64_t C, F&& fn) {
    for (int64_t p = 0; p < kSub;) {
        const int32_t s = blk.s[p];
        int64_t q = p + 1;
        while (q < kSub && blk.s[q] == s) ++q;
        if (s >= 0 && s < C) fn(p, q - p, static_cast<int64_t>(s));
        p = q;
    }
}

/// The pull anchors of a block: mu[d][p] = means[slot p][d] (0 outside the clusters), and
/// dist[p] = |e_p - mu_p|^2; returns whether any pixel of the block is in a cluster.
template <class T>
inline bool pull_block(const PixelSet<T>& px, const PixelBlock<T>& blk, int64_t b, T (*mu)[kSub], T* dist) {
    const int64_t D = px.D, C = px.C;
    bool any = false;
    for (int64_t d = 0; d < D; ++d) std::fill(mu[d], mu[d] + kSub, T(0));
    for_each_run(blk, C, [&](int64_t p, int64_t len, int64_t s) {
        const T* m = px.means + (b * C + s) * D;
        for (int64_t d = 0; d < D; ++d) std::fill(mu[d] + p, mu[d] + p + len, m[d]);
        any = true;
    });
    if (!any) return false;
    for (int64_t p = 0; p < kSub; ++p) dist[p] = T(0);
    for (int64_t d = 0; d < D; ++d)
        for (int64_t p = 0; p < kSub; ++p) {
            const T t = blk.e[d][p] - mu[d][p];
            dist[p] += t * t;
        }
    return true;
}

/// Whether any of the kSub values of a block is non-zero (an OR of the bit patterns without
/// the sign, which compilers vectorise, unlike a chain of float comparisons).
template <class T>
inline bool any_nonzero(const T* v) {
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    constexpr U magnitude = ~(U(1) << (8 * sizeof(T) - 1));
    U bits = 0;
    for (int64_t p = 0; p < kSub; ++p) {
        U x;
        std::memcpy(&x, v + p, sizeof(x));
        bits |= x & magnitude;
    }
    return bits != 0;
}

/// Forward of one term over a block: lanes[k * n_out + o] += the block's summands of output o.
template <int TERM, class T>
void forward_term(const TermSet<T>& ts, const PixelBlock<T>& blk, int64_t b, int64_t D, int64_t Kb, int64_t block,
                  Vec<T>* lanes) {
    constexpr int n_out = term_outputs(TERM);
    constexpr bool with_g = TERM == kConsistency;
    const T* w = ts.on_unlabeled ? blk.u : blk.w;
    alignas(64) T dist[kSub], dist_g[kSub], v[3][kSub];
    // The unlabeled-push hinge is 0 where d >= delta^2 (the threshold is raised by a few ulps so
    // that rounding never drops a non-zero value): blocks with no weighted pixel nearer add 0.
    const T near2 = ts.delta * ts.delta * (T(1) + 4 * std::numeric_limits<T>::epsilon());
    for (int64_t k = 0; k < Kb; ++k) {
        block_sq_dist(blk.e, ts.anchors + (b * ts.K + k) * D, D, dist);
        if constexpr (with_g) block_sq_dist(blk.eg, ts.anchors_g + (b * ts.K + k) * D, D, dist_g);
        if constexpr (TERM == kUnlabeledPush) {
            for (int64_t p = 0; p < kSub; ++p) v[0][p] = dist[p] < near2 ? w[p] : T(0);
            if (!any_nonzero(v[0])) {
                if (ts.active) ts.active[(b * ts.K + k) * ts.n_blocks + block] = 0;
                continue;
            }
        }
        const int32_t k32 = static_cast<int32_t>(k);
        for (int64_t p = 0; p < kSub; ++p) {
            T vals[3];
            term_values<TERM, T>(dist[p], with_g ? dist_g[p] : T(0), blk.s[p] == k32, w[p], ts.h, ts.delta, vals);
            for (int o = 0; o < n_out; ++o) v[o][p] = vals[o];
        }
        for (int o = 0; o < n_out; ++o) lanes[k * n_out + o] += block_lanes(v[o]);
        if (ts.active) {
            bool any = false;
            for (int o = 0; o < n_out; ++o) any |= any_nonzero(v[o]);
            ts.active[(b * ts.K + k) * ts.n_blocks + block] = any;
        }
    }
}

/// Backward coefficients c[p] = dL/dd of anchor k of one term over a block.
template <int TERM, class T>
void coef_row(const TermSet<T>& ts, const PixelBlock<T>& blk, int64_t b, int64_t D, int64_t B, int64_t k, T* c) {
    constexpr bool with_g = TERM == kConsistency;
    constexpr bool two = term_outputs(TERM) > 1;
    const T* w = ts.on_unlabeled ? blk.u : blk.w;
    alignas(64) T dist[kSub], dist_g[kSub];
    block_sq_dist(blk.e, ts.anchors + (b * ts.K + k) * D, D, dist);
    if constexpr (with_g) block_sq_dist(blk.eg, ts.anchors_g + (b * ts.K + k) * D, D, dist_g);
    const T g0 = ts.grad_out[b * ts.K + k], g1 = two ? ts.grad_out[(B + b) * ts.K + k] : T(0);
    const int32_t k32 = static_cast<int32_t>(k);
    for (int64_t p = 0; p < kSub; ++p)
        c[p] = term_coef<TERM, T>(dist[p], with_g ? dist_g[p] : T(0), blk.s[p] == k32, w[p], ts.h, ts.delta, g0, g1);
}

/// A row of a backward block: an anchor, its coefficients over the block's pixels and the
/// lane sums of its dL/da (D vectors, or null).
template <class T>
struct Row {
    const T* anchor;
    Vec<T>* lanes;
};

/// ge[d][p] += sum_r c_r[p] (e[d][p] - a_r[d]) and lanes_r[d] += the block's sum of the same
/// products: one pass over the dimensions with the block's gradient in registers.
template <class T>
void apply_rows(const PixelBlock<T>& blk, int64_t D, const Row<T>* rows, const T* c, int64_t n_rows, T (*ge)[kSub]) {
    constexpr int64_t W = vec_width<T>();
    constexpr int64_t G = kVecBytes == 64 ? 8 : 4;  // vectors per group: e and ge stay in the registers
    constexpr int64_t GW = W * G < kSub ? W * G : kSub, NG = kSub / GW, NV = GW / W;
    for (int64_t d = 0; d < D; ++d)
        for (int64_t g = 0; g < NG; ++g) {
            const int64_t off = g * GW;
            Vec<T> e[NV], acc[NV];
            for (int64_t j = 0; j < NV; ++j) e[j] = vload(blk.e[d] + off + j * W), acc[j] = vload(ge[d] + off + j * W);
            for (int64_t r = 0; r < n_rows; ++r) {
                const Vec<T> ad = vsplat(rows[r].anchor[d]);
                const T* cr = c + r * kSub + off;
                Vec<T> lane = vsplat(T(0));
                for (int64_t j = 0; j < NV; ++j) {
                    const Vec<T> cj = vload(cr + j * W), t = e[j] - ad;
                    acc[j] = vfma<T>(cj, t, acc[j]);
                    lane = vfma<T>(cj, t, lane);
                }
                if (rows[r].lanes) rows[r].lanes[d] += lane;
            }
            for (int64_t j = 0; j < NV; ++j) vstore(ge[d] + off + j * W, acc[j]);
        }
}

/// Per-task scratch of a pass.
template <class T>
struct PassScratch {
    PixelBlock<T> blk;
    alignas(64) T ge[kMaxDim][kSub];
    alignas(64) T mu[kMaxDim][kSub];
    alignas(64) T c[kRowChunk * kSub];
};

/// Where each term's (and the pull's) partial sums sit in a task's partials.
struct PassLayout {
    std::vector<int64_t> off;  ///< per term
    int64_t pull_off = 0, per = 0, tile = 0, n_tiles = 0;
};

template <class T>
PassLayout pass_layout(const PixelSet<T>& px, const TermSet<T>* terms, int n_terms, bool backward) {
    PassLayout L;
    int64_t anchors = 0;
    for (int i = 0; i < n_terms; ++i) {
        L.off.push_back(L.per);
        const int64_t K = terms[i].K;
        anchors += K;
        if (!backward) L.per += term_outputs(terms[i].term) * K;
        else if (terms[i].grad_anchors) L.per += K * px.D;
    }
    L.pull_off = L.per;
    if (px.means) {
        anchors += px.C;
        if (!backward) L.per += px.C;
        else if (px.pull_grad_means) L.per += px.C * px.D;
    }
    L.tile = pass_tile(anchors);
    L.n_tiles = (px.N + L.tile - 1) / L.tile;
    return L;
}

/// Add per-(image, tile) partials part[(b * n_tiles + t) * per + j] over t in tile order.
inline void combine_tiles(const std::vector<double>& part, int64_t B, int64_t n_tiles, int64_t per, double* out,
                          int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (B * per * n_tiles > (1 << 18))
    for (int64_t bj = 0; bj < B * per; ++bj) {
        const int64_t b = bj / per, j = bj % per;
        double s = 0;
        for (int64_t t = 0; t < n_tiles; ++t) s += part[(b * n_tiles + t) * per + j];
        out[bj] = s;
    }
}

template <class T>
int64_t valid_count(const TermSet<T>& ts, int64_t b) {
    return std::min<int64_t>(ts.K, std::max<int64_t>(ts.n_valid[b], 0));
}

/// The forward work of one pixel block: every term's lane sums and the pull sums.
template <class T>
void forward_block(const PixelSet<T>& px, const TermSet<T>* terms, int n_terms, PassScratch<T>& sc, int64_t b,
                   int64_t block,                   const std::vector<int64_t>& kb, std::vector<std::vector<Vec<T>>>& lanes, double* pull_acc) {
    const PixelBlock<T>& blk = sc.blk;
    for (int i = 0; i < n_terms; ++i) {
        Vec<T>* ln = lanes[i].data();
        switch (terms[i].term) {
            case kSoftMask: forward_term<kSoftMask>(terms[i], blk, b, px.D, kb[i], block, ln); break;
            case kUnlabeledPush: forward_term<kUnlabeledPush>(terms[i], blk, b, px.D, kb[i], block, ln); break;
            default: forward_term<kConsistency>(terms[i], blk, b, px.D, kb[i], block, ln); break;
        }
    }
    alignas(64) T dist[kSub], v[kSub];
    if (!px.means || !pull_block(px, blk, b, sc.mu, dist)) return;
    for (int64_t p = 0; p < kSub; ++p) v[p] = pull_value(dist[p], px.delta_v);
    for_each_run(blk, px.C, [&](int64_t p, int64_t len, int64_t s) { pull_acc[s] += run_sum(v + p, len); });
}

/// The backward work of one pixel block: sc.ge = dL/de / 2 of its pixels, the terms' dL/da
/// lane sums and the pull's dL/dmu partials.
template <class T>
void backward_block(const PixelSet<T>& px, const TermSet<T>* terms, int n_terms, PassScratch<T>& sc, int64_t b,
                    int64_t block,                    const std::vector<int64_t>& kb, std::vector<std::vector<Vec<T>>>& lanes, double* pull_acc) {
    const PixelBlock<T>& blk = sc.blk;
    const int64_t D = px.D;
    for (int64_t d = 0; d < D; ++d) std::fill(sc.ge[d], sc.ge[d] + kSub, T(0));
    Row<T> rows[kRowChunk];
    int64_t n_rows = 0;
    auto flush = [&]() {
        apply_rows(blk, D, rows, sc.c, n_rows, sc.ge);
        n_rows = 0;
    };
    for (int i = 0; i < n_terms; ++i) {
        const TermSet<T>& ts = terms[i];
        for (int64_t k = 0; k < kb[i]; ++k) {
            if (ts.active && !ts.active[(b * ts.K + k) * ts.n_blocks + block]) continue;  // all zero in the forward
            T* c = sc.c + n_rows * kSub;
            switch (ts.term) {
                case kSoftMask: coef_row<kSoftMask>(ts, blk, b, D, px.B, k, c); break;
                case kUnlabeledPush: coef_row<kUnlabeledPush>(ts, blk, b, D, px.B, k, c); break;
                default: coef_row<kConsistency>(ts, blk, b, D, px.B, k, c); break;
            }
            // A row of zeros adds nothing (exactly): most unlabeled-push rows, whose hinge is 0
            // beyond delta_d, and rows of anchors without upstream gradient.
            if (!any_nonzero(c)) continue;
            rows[n_rows++] = Row<T>{ts.anchors + (b * ts.K + k) * D, ts.grad_anchors ? lanes[i].data() + k * D : nullptr};
            if (n_rows == kRowChunk) flush();
        }
    }
    if (n_rows) flush();
    alignas(64) T dist[kSub], c[kSub], g[kSub];
    if (!px.means || !pull_block(px, blk, b, sc.mu, dist)) return;
    for (int64_t p = 0; p < kSub; ++p) {
        const int32_t s = blk.s[p];
        c[p] = (s >= 0 && s < px.C) ? px.pull_grad[b * px.C + s] * pull_coef(dist[p], px.delta_v) : T(0);
    }
    for (int64_t d = 0; d < D; ++d) {
        for (int64_t p = 0; p < kSub; ++p) {
            g[p] = c[p] * (blk.e[d][p] - sc.mu[d][p]);
            sc.ge[d][p] += g[p];
        }
        if (pull_acc)
            for_each_run(blk, px.C, [&](int64_t p, int64_t len, int64_t s) {
                pull_acc[s * D + d] += run_sum(g + p, len);
            });
    }
}

}  // namespace detail

/// One pass over all pixels for the terms (and the pull term when px.means is set).
/// Forward (backward = false): terms[i].out and px.pull_out. Backward: px.grad_emb (every
/// element, 0 for pixels no term touches), terms[i].grad_anchors and px.pull_grad_means,
/// each where non-null.
template <class T>
void pixel_pass(const PixelSet<T>& px, const TermSet<T>* terms, int n_terms, bool backward, int threads) {
    const int64_t B = px.B, D = px.D, N = px.N;
    detail::check_dims(B, D, N, px.C);
    if (px.C >= INT32_MAX) throw std::invalid_argument("spoco loss kernels: too many slots");
    bool with_g = false;
    for (int i = 0; i < n_terms; ++i) {
        detail::check_dims(B, D, N, terms[i].K);
        with_g |= terms[i].term == kConsistency;
    }
    threads = resolve_threads(threads);
    const detail::PassLayout L = detail::pass_layout(px, terms, n_terms, backward);
    std::vector<double> part(static_cast<size_t>(B * L.n_tiles * L.per), 0.0);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t task = 0; task < B * L.n_tiles; ++task) {
        const int64_t b = task / L.n_tiles, t = task % L.n_tiles;
        double* acc = part.data() + task * L.per;
        auto sc = std::make_unique<detail::PassScratch<T>>();
        std::vector<int64_t> kb(static_cast<size_t>(n_terms));
        std::vector<std::vector<Vec<T>>> lanes(static_cast<size_t>(n_terms));  // float lane sums since the last flush
        for (int i = 0; i < n_terms; ++i) {
            kb[i] = detail::valid_count(terms[i], b);
            const int64_t per_k = backward ? (terms[i].grad_anchors ? D : 0) : term_outputs(terms[i].term);
            lanes[i].assign(static_cast<size_t>(kb[i] * per_k), vsplat(T(0)));
        }
        auto flush = [&]() {
            for (int i = 0; i < n_terms; ++i) {
                double* dst = acc + L.off[i];
                for (size_t j = 0; j < lanes[i].size(); ++j) {
                    dst[j] += detail::lane_total<T>(lanes[i][j]);
                    lanes[i][j] = vsplat(T(0));
                }
            }
        };
        double* pull_acc = px.means && (!backward || px.pull_grad_means) ? acc + L.pull_off : nullptr;
        const int64_t p_end = std::min(N, (t + 1) * L.tile);
        for (int64_t p0 = t * L.tile; p0 < p_end; p0 += kSub) {
            const int64_t np = std::min(kSub, p_end - p0);
            sc->blk.load(px, with_g, b, p0, np);
            if (!backward) {
                detail::forward_block(px, terms, n_terms, *sc, b, p0 / kSub, kb, lanes, pull_acc);
            } else {
                detail::backward_block(px, terms, n_terms, *sc, b, p0 / kSub, kb, lanes, pull_acc);
                if (px.grad_emb)
                    for (int64_t d = 0; d < D; ++d) {
                        T* dst = px.grad_emb + (b * D + d) * N + p0;
                        for (int64_t p = 0; p < np; ++p) dst[p] = T(2) * sc->ge[d][p];
                    }
            }
            if ((p0 - t * L.tile + kSub) % kFlush == 0) flush();
        }
        flush();
    }
    std::vector<double> tot(static_cast<size_t>(B * L.per));
    detail::combine_tiles(part, B, L.n_tiles, L.per, tot.data(), threads);
    for (int64_t b = 0; b < B; ++b) {
        const double* src = tot.data() + b * L.per;
        for (int i = 0; i < n_terms; ++i) {
            const TermSet<T>& ts = terms[i];
            const int64_t K = ts.K;
            if (!backward && ts.out) {
                const int n_out = term_outputs(ts.term);
                for (int o = 0; o < n_out; ++o)
                    for (int64_t k = 0; k < K; ++k) ts.out[(o * B + b) * K + k] = static_cast<T>(src[L.off[i] + k * n_out + o]);
            } else if (backward && ts.grad_anchors) {
                for (int64_t j = 0; j < K * D; ++j) ts.grad_anchors[b * K * D + j] = static_cast<T>(-2 * src[L.off[i] + j]);
            }
        }
        if (!backward && px.means && px.pull_out)
            for (int64_t k = 0; k < px.C; ++k) px.pull_out[b * px.C + k] = static_cast<T>(src[L.pull_off + k]);
        if (backward && px.means && px.pull_grad_means)
            for (int64_t j = 0; j < px.C * D; ++j)
                px.pull_grad_means[b * px.C * D + j] = static_cast<T>(-2 * src[L.pull_off + j]);
    }
}

}  // namespace SPOCO_LOSS_ISA
}  // namespace spoco::loss
