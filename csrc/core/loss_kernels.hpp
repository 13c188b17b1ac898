// CPU kernels of the SPOCO loss reductions (Sec. 3.1-3.2): one or two passes over
// the embeddings, memory O(B N D + B K D), no (K, N) mask.
//
// Layouts (all C-contiguous): embeddings (B, D, N), anchors/means (B, K, D), slot
// (B, N) int64 (cluster slot of a pixel, K or -1 = none), weight (B, N) or null (all 1),
// n_valid (B,): anchors k >= n_valid[b] of image b are skipped (their outputs are 0).
//
// Determinism: pixels are cut into tiles whose size depends only on N and K
// (reduction_tile); each (image, tile) task writes its own partial sums (double) and
// the partials are added in tile order. Results are therefore bit-identical for any
// number of threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#include "core/common.hpp"
#include "core/loss_terms.hpp"

namespace spoco::loss {
inline namespace SPOCO_LOSS_ISA {

constexpr int64_t kSub = 64;        ///< pixels per inner block (kept in L1 and registers)
constexpr int64_t kLanes = 16;      ///< independent partial sums per inner block (vectorisable)
constexpr int64_t kMinTile = 1024;  ///< smallest reduction tile (pixels)
constexpr int64_t kMaxDim = 64;     ///< largest embedding dimension D

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

namespace detail {

/// One inner block of pixels copied (zero-padded to kSub) with weights and slots.
template <class T>
struct PixelBlock {
    T e[kMaxDim][kSub];
    T eg[kMaxDim][kSub];
    T w[kSub];
    int64_t slot[kSub];

    /// Embeddings (and g-embeddings unless null) of pixels p0..p0+np of image b.
    void load_emb(const T* emb, const T* emb_g, int64_t D, int64_t N, int64_t b, int64_t p0, int64_t np) {
        for (int64_t d = 0; d < D; ++d) {
            const T* src = emb + (b * D + d) * N + p0;
            for (int64_t p = 0; p < kSub; ++p) e[d][p] = p < np ? src[p] : T(0);
            if (emb_g) {
                const T* sg = emb_g + (b * D + d) * N + p0;
                for (int64_t p = 0; p < kSub; ++p) eg[d][p] = p < np ? sg[p] : T(0);
            }
        }
    }

    /// Weights (null = 1; padding weighs 0) and slots (null = none) of the same pixels.
    void load_pixels(const T* weight, const int64_t* slots, int64_t N, int64_t b, int64_t p0, int64_t np) {
        for (int64_t p = 0; p < kSub; ++p) {
            w[p] = p < np ? (weight ? weight[b * N + p0 + p] : T(1)) : T(0);
            slot[p] = (p < np && slots) ? slots[b * N + p0 + p] : -1;
        }
    }

    void load(const AnchorPixelArgs<T>& a, int64_t b, int64_t p0, int64_t np, bool with_g) {
        load_emb(a.emb, with_g ? a.emb_g : nullptr, a.D, a.N, b, p0, np);
        load_pixels(a.weight, a.slot, a.N, b, p0, np);
    }
};

/// dist[p] = |e_p - a|^2 for the kSub pixels of a block.
template <class T>
inline void block_sq_dist(const T (*e)[kSub], const T* a, int64_t D, T* dist) {
    for (int64_t p = 0; p < kSub; ++p) dist[p] = T(0);
    for (int64_t d = 0; d < D; ++d) {
        const T ad = a[d];
        for (int64_t p = 0; p < kSub; ++p) {
            const T t = e[d][p] - ad;
            dist[p] += t * t;
        }
    }
}

/// lanes[l] += v[j + l] over the kSub values: kLanes independent partial sums (vector adds).
template <class T>
inline void lane_add(T* __restrict lanes, const T* __restrict v) {
    for (int64_t j = 0; j < kSub; j += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += v[j + l];
}

/// Sum of kLanes partial sums in a fixed order.
template <class T>
inline double lane_total(const T* lanes) {
    double s = 0;
    for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
    return s;
}

inline void check_dims(int64_t B, int64_t D, int64_t N, int64_t K) {
    if (B < 1 || N < 1 || K < 0 || D < 1 || D > kMaxDim)
        throw std::invalid_argument("spoco loss kernels: need B >= 1, N >= 1, K >= 0 and 1 <= D <= 64");
}

/// Add per-(image, tile) partials part[(b * n_tiles + t) * per + j] over t in tile order.
template <class T>
void combine_tiles(const std::vector<double>& part, int64_t B, int64_t n_tiles, int64_t per, T* out, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (B * per * n_tiles > (1 << 18))
    for (int64_t bj = 0; bj < B * per; ++bj) {
        const int64_t b = bj / per, j = bj % per;
        double s = 0;
        for (int64_t t = 0; t < n_tiles; ++t) s += part[(b * n_tiles + t) * per + j];
        out[bj] = static_cast<T>(s);
    }
}

}  // namespace detail

/// Forward anchor x pixel sums of TERM: out (n_out, B, K) with
/// out[o, b, k] = sum_i of term_values(d_ki, ...)[o] over every pixel i of image b.
template <int TERM, class T>
void anchor_pixel_sums(const AnchorPixelArgs<T>& a, T* out, int threads) {
    detail::check_dims(a.B, a.D, a.N, a.K);
    threads = resolve_threads(threads);
    constexpr int n_out = term_outputs(TERM);
    constexpr bool with_g = TERM == kConsistency;
    const int64_t B = a.B, D = a.D, N = a.N, K = a.K;
    const int64_t tile = reduction_tile(K, kMinTile), n_tiles = (N + tile - 1) / tile;
    std::vector<double> part(static_cast<size_t>(B * n_tiles * K * n_out), 0.0);  // [b][t][o][k]
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t task = 0; task < B * n_tiles; ++task) {
        const int64_t b = task / n_tiles, t = task % n_tiles;
        const int64_t Kb = std::min<int64_t>(K, std::max<int64_t>(a.n_valid[b], 0));
        double* acc = part.data() + task * K * n_out;
        auto blk = std::make_unique<detail::PixelBlock<T>>();
        // per-(anchor, output) lane sums over the tile; added up once per tile (horizontal sums are costly)
        std::vector<T> lanes(static_cast<size_t>(Kb * n_out * kLanes), T(0));
        T dist[kSub], dist_g[kSub], v[3][kSub];
        for (int64_t p0 = t * tile; p0 < std::min(N, (t + 1) * tile); p0 += kSub) {
            blk->load(a, b, p0, std::min(kSub, N - p0), with_g);
            for (int64_t k = 0; k < Kb; ++k) {
                detail::block_sq_dist(blk->e, a.anchors + (b * K + k) * D, D, dist);
                if constexpr (with_g) detail::block_sq_dist(blk->eg, a.anchors_g + (b * K + k) * D, D, dist_g);
                for (int64_t p = 0; p < kSub; ++p) {
                    T vals[3];
                    term_values<TERM, T>(dist[p], with_g ? dist_g[p] : T(0), blk->slot[p] == k, blk->w[p], a.h,
                                         a.delta, vals);
                    for (int o = 0; o < n_out; ++o) v[o][p] = vals[o];
                }
                for (int o = 0; o < n_out; ++o) detail::lane_add(lanes.data() + (k * n_out + o) * kLanes, v[o]);
            }
        }
        for (int64_t k = 0; k < Kb; ++k)
            for (int o = 0; o < n_out; ++o) acc[o * K + k] = detail::lane_total(lanes.data() + (k * n_out + o) * kLanes);
    }
    // part is [b][t][o][k]: combine to [b][o][k], then reorder to (o, b, k)
    std::vector<T> tmp(static_cast<size_t>(B * n_out * K));
    detail::combine_tiles(part, B, n_tiles, n_out * K, tmp.data(), threads);
    for (int64_t b = 0; b < B; ++b)
        for (int o = 0; o < n_out; ++o)
            for (int64_t k = 0; k < K; ++k) out[(o * B + b) * K + k] = tmp[(b * n_out + o) * K + k];
}

/// One term of a fused backward pass: its arguments (sharing emb with the others),
/// the upstream gradient (n_out, B, K) of its outputs and its dL/da (B, K, D) or null.
template <class T>
struct TermGrad {
    int term = kSoftMask;
    AnchorPixelArgs<T> a;
    const T* grad_out = nullptr;
    T* grad_anchors = nullptr;
};

namespace detail {

/// Adds the contributions of one term's Kb anchors to a block's ge[d][p] = sum_k c_kp (e_p - a_k)
/// and to its per-anchor lane sums of c_kp (e_p - a_k) (for dL/da).
template <int TERM, class T>
void backward_block(const TermGrad<T>& tg, const PixelBlock<T>& blk, int64_t b, int64_t Kb, T* __restrict ge,
                    T* __restrict lanes) {
    constexpr bool with_g = TERM == kConsistency;
    constexpr bool two = term_outputs(TERM) > 1;
    const AnchorPixelArgs<T>& a = tg.a;
    const int64_t B = a.B, D = a.D, K = a.K;
    T dist[kSub], dist_g[kSub], c[kSub], prod[kSub];
    for (int64_t k = 0; k < Kb; ++k) {
        const T* ak = a.anchors + (b * K + k) * D;
        block_sq_dist(blk.e, ak, D, dist);
        if constexpr (with_g) block_sq_dist(blk.eg, a.anchors_g + (b * K + k) * D, D, dist_g);
        const T g0 = tg.grad_out[b * K + k], g1 = two ? tg.grad_out[(B + b) * K + k] : T(0);
        for (int64_t p = 0; p < kSub; ++p)
            c[p] = term_coef<TERM, T>(dist[p], with_g ? dist_g[p] : T(0), blk.slot[p] == k, blk.w[p], a.h, a.delta,
                                      g0, g1);
        for (int64_t d = 0; d < D; ++d) {
            const T ad = ak[d];
            T* __restrict ged = ge + d * kSub;
            const T* __restrict ed = blk.e[d];
            for (int64_t p = 0; p < kSub; ++p) {
                prod[p] = c[p] * (ed[p] - ad);
                ged[p] += prod[p];
            }
            if (lanes) lane_add(lanes + (k * D + d) * kLanes, prod);
        }
    }
}

}  // namespace detail

/// Backward of several anchor_pixel_sums terms over the same embeddings in one pass:
/// every pixel block is loaded once, all terms add to its dL/de, and grad_emb (B, D, N)
/// (every element written) holds the sum over the terms. Each term's dL/da goes to its
/// grad_anchors. The g-embeddings get no gradient.
template <class T>
void anchor_pixel_terms_backward(const TermGrad<T>* terms, int n_terms, T* grad_emb, int threads) {
    if (n_terms < 1) throw std::invalid_argument("anchor_pixel_terms_backward: no term");
    const AnchorPixelArgs<T>& a0 = terms[0].a;
    const int64_t B = a0.B, D = a0.D, N = a0.N;
    int64_t K_max = 0;
    const T* emb_g = nullptr;
    for (int i = 0; i < n_terms; ++i) {
        const AnchorPixelArgs<T>& a = terms[i].a;
        detail::check_dims(a.B, a.D, a.N, a.K);
        if (a.B != B || a.D != D || a.N != N || a.emb != a0.emb)
            throw std::invalid_argument("anchor_pixel_terms_backward: the terms must share the embeddings");
        K_max = std::max(K_max, a.K);
        if (terms[i].term == kConsistency) emb_g = a.emb_g;
    }
    threads = resolve_threads(threads);
    const int64_t tile = reduction_tile(K_max, kMinTile), n_tiles = (N + tile - 1) / tile;
    std::vector<std::vector<double>> part(static_cast<size_t>(n_terms));  // per term: [b][t][k][d]
    for (int i = 0; i < n_terms; ++i)
        if (terms[i].grad_anchors) part[i].assign(static_cast<size_t>(B * n_tiles * terms[i].a.K * D), 0.0);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t task = 0; task < B * n_tiles; ++task) {
        const int64_t b = task / n_tiles, t = task % n_tiles;
        auto blk = std::make_unique<detail::PixelBlock<T>>();
        auto ge = std::make_unique<T[]>(static_cast<size_t>(kMaxDim * kSub));
        std::vector<int64_t> kb(static_cast<size_t>(n_terms));
        std::vector<std::vector<T>> lanes(static_cast<size_t>(n_terms));  // dL/da lane sums over the tile
        for (int i = 0; i < n_terms; ++i) {
            const AnchorPixelArgs<T>& a = terms[i].a;
            kb[i] = std::min<int64_t>(a.K, std::max<int64_t>(a.n_valid[b], 0));
            if (terms[i].grad_anchors) lanes[i].assign(static_cast<size_t>(kb[i] * D * kLanes), T(0));
        }
        for (int64_t p0 = t * tile; p0 < std::min(N, (t + 1) * tile); p0 += kSub) {
            const int64_t np = std::min(kSub, N - p0);
            blk->load_emb(a0.emb, emb_g, D, N, b, p0, np);
            std::fill(ge.get(), ge.get() + D * kSub, T(0));
            for (int i = 0; i < n_terms; ++i) {
                const TermGrad<T>& tg = terms[i];
                blk->load_pixels(tg.a.weight, tg.a.slot, N, b, p0, np);
                T* ln = tg.grad_anchors ? lanes[i].data() : nullptr;
                switch (tg.term) {
                    case kSoftMask: detail::backward_block<kSoftMask>(tg, *blk, b, kb[i], ge.get(), ln); break;
                    case kUnlabeledPush: detail::backward_block<kUnlabeledPush>(tg, *blk, b, kb[i], ge.get(), ln); break;
                    default: detail::backward_block<kConsistency>(tg, *blk, b, kb[i], ge.get(), ln); break;
                }
            }
            if (grad_emb)
                for (int64_t d = 0; d < D; ++d) {
                    T* dst = grad_emb + (b * D + d) * N + p0;
                    const T* ged = ge.get() + d * kSub;
                    for (int64_t p = 0; p < np; ++p) dst[p] = T(2) * ged[p];
                }
        }
        for (int i = 0; i < n_terms; ++i) {
            if (!terms[i].grad_anchors) continue;
            double* acc = part[i].data() + task * terms[i].a.K * D;
            for (int64_t kd = 0; kd < kb[i] * D; ++kd) acc[kd] = -2 * detail::lane_total(lanes[i].data() + kd * kLanes);
        }
    }
    for (int i = 0; i < n_terms; ++i)
        if (terms[i].grad_anchors)
            detail::combine_tiles(part[i], B, n_tiles, terms[i].a.K * D, terms[i].grad_anchors, threads);
}

/// Backward of anchor_pixel_sums given grad_out (n_out, B, K): grad_emb (B, D, N)
/// and grad_anchors (B, K, D), either may be null. The g-embeddings get no gradient.
template <int TERM, class T>
void anchor_pixel_sums_backward(const AnchorPixelArgs<T>& a, const T* grad_out, T* grad_emb, T* grad_anchors,
                                int threads) {
    TermGrad<T> tg;
    tg.term = TERM, tg.a = a, tg.grad_out = grad_out, tg.grad_anchors = grad_anchors;
    anchor_pixel_terms_backward(&tg, 1, grad_emb, threads);
}

namespace detail {

/// Calls fn(p0, len, s) for the runs of equal slot s in [0, C) among pixels [begin, end)
/// of one image (runs cut at kSub pixels). Labels are spatially coherent, so runs are
/// long: per-slot work is vectorised along a run and needs no gather or scatter.
template <class F>
inline void for_each_run(const int64_t* slot, int64_t begin, int64_t end, int64_t C, F&& fn) {
    int64_t p = begin;
    while (p < end) {
        const int64_t s = slot[p];
        int64_t q = p + 1;
        while (q < end && q - p < kSub && slot[q] == s) ++q;
        if (s >= 0 && s < C) fn(p, q - p, s);
        p = q;
    }
}

/// Sum of v[0..len) (len <= kSub) in a fixed order, vectorised.
template <class T>
inline T run_sum(const T* v, int64_t len) {
    T pad[kSub];
    for (int64_t q = 0; q < kSub; ++q) pad[q] = q < len ? v[q] : T(0);
    T lanes[kLanes] = {};
    lane_add(lanes, pad);
    T s = T(0);
    for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
    return s;
}

}  // namespace detail

/// Per-slot sums of the embeddings and pixel counts: sums (B, C, D), counts (B, C).
/// Pixels with slot outside [0, C) belong to no slot.
template <class T>
void segment_sum(const T* emb, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C, T* sums, T* counts,
                 int threads) {
    detail::check_dims(B, D, N, C);
    threads = resolve_threads(threads);
    const int64_t tile = reduction_tile(C, kMinTile), n_tiles = (N + tile - 1) / tile, per = C * (D + 1);
    std::vector<double> part(static_cast<size_t>(B * n_tiles * per), 0.0);  // [b][t][c][d | count]
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t task = 0; task < B * n_tiles; ++task) {
        const int64_t b = task / n_tiles, t = task % n_tiles;
        double* acc = part.data() + task * per;
        detail::for_each_run(slot + b * N, t * tile, std::min(N, (t + 1) * tile), C, [&](int64_t p, int64_t len,
                                                                                       int64_t s) {
            for (int64_t d = 0; d < D; ++d) acc[s * (D + 1) + d] += detail::run_sum(emb + (b * D + d) * N + p, len);
            acc[s * (D + 1) + D] += static_cast<double>(len);
        });
    }
    std::vector<T> tmp(static_cast<size_t>(B * per));
    detail::combine_tiles(part, B, n_tiles, per, tmp.data(), threads);
    for (int64_t bc = 0; bc < B * C; ++bc) {
        for (int64_t d = 0; d < D; ++d) sums[bc * D + d] = tmp[bc * (D + 1) + d];
        counts[bc] = tmp[bc * (D + 1) + D];
    }
}

/// grad_emb (B, D, N) of segment_sum: each pixel gets the gradient of its slot's sum.
template <class T>
void segment_sum_backward(const T* grad_sums, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C,
                          T* grad_emb, int threads) {
    threads = resolve_threads(threads);
    constexpr int64_t block = 1 << 14;
    const int64_t n_blocks = (N + block - 1) / block;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < B * n_blocks; ++task) {
        const int64_t b = task / n_blocks, p0 = (task % n_blocks) * block, p1 = std::min(N, p0 + block);
        for (int64_t d = 0; d < D; ++d) std::fill(grad_emb + (b * D + d) * N + p0, grad_emb + (b * D + d) * N + p1, T(0));
        detail::for_each_run(slot + b * N, p0, p1, C, [&](int64_t p, int64_t len, int64_t s) {
            for (int64_t d = 0; d < D; ++d) {
                const T g = grad_sums[(b * C + s) * D + d];
                T* dst = grad_emb + (b * D + d) * N + p;
                for (int64_t q = 0; q < len; ++q) dst[q] = g;
            }
        });
    }
}

/// Pull sums (Eq. 1): out (B, C) = sum over the pixels of slot k of [|mu_k - e_i| - delta_v]_+^2.
/// With grad (B, C) given, computes instead grad_emb (B, D, N) and grad_means (B, C, D)
/// (either may be null) of sum_k grad_k out_k. Work goes run by run of equal slot.
template <class T>
void pull_sums(const T* emb, const T* means, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C,
               T delta_v, T* out, const T* grad, T* grad_emb, T* grad_means, int threads) {
    detail::check_dims(B, D, N, C);
    threads = resolve_threads(threads);
    const bool backward = grad != nullptr;
    const int64_t tile = reduction_tile(C, kMinTile), n_tiles = (N + tile - 1) / tile;
    const int64_t per = backward ? C * D : C;
    const bool need_part = !backward || grad_means;
    std::vector<double> part(need_part ? static_cast<size_t>(B * n_tiles * per) : 0, 0.0);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t task = 0; task < B * n_tiles; ++task) {
        const int64_t b = task / n_tiles, t = task % n_tiles;
        const int64_t p0 = t * tile, p1 = std::min(N, (t + 1) * tile);
        double* acc = need_part ? part.data() + task * per : nullptr;
        if (grad_emb)  // pixels of no slot get 0
            for (int64_t d = 0; d < D; ++d) std::fill(grad_emb + (b * D + d) * N + p0, grad_emb + (b * D + d) * N + p1, T(0));
        T dist[kSub], v[kSub], g[kSub];
        detail::for_each_run(slot + b * N, p0, p1, C, [&](int64_t p, int64_t len, int64_t s) {
            const T* mu = means + (b * C + s) * D;
            for (int64_t q = 0; q < len; ++q) dist[q] = T(0);
            for (int64_t d = 0; d < D; ++d) {
                const T* row = emb + (b * D + d) * N + p;
                for (int64_t q = 0; q < len; ++q) {
                    const T x = row[q] - mu[d];
                    dist[q] += x * x;
                }
            }
            if (!backward) {
                for (int64_t q = 0; q < len; ++q) v[q] = pull_value(dist[q], delta_v);
                acc[s] += detail::run_sum(v, len);
                return;
            }
            const T gs = grad[b * C + s];
            for (int64_t q = 0; q < len; ++q) v[q] = gs * pull_coef(dist[q], delta_v);  // c_i
            for (int64_t d = 0; d < D; ++d) {
                const T* row = emb + (b * D + d) * N + p;
                for (int64_t q = 0; q < len; ++q) g[q] = T(2) * v[q] * (row[q] - mu[d]);
                if (grad_emb) std::copy(g, g + len, grad_emb + (b * D + d) * N + p);
                if (acc) acc[s * D + d] -= detail::run_sum(g, len);
            }
        });
    }
    if (need_part) detail::combine_tiles(part, B, n_tiles, per, backward ? grad_means : out, threads);
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
        // first covering anchor of every unlabeled pixel, by blocks of kSub (vectorised distances)
        const int64_t n_a = static_cast<int64_t>(found.size());
        std::vector<int64_t> newly(static_cast<size_t>(n_a + 1), 0);
        T df[kSub], dg[kSub];
        int64_t first[kSub];
        for (int64_t i0 = 0; i0 < N; i0 += kSub) {
            const int64_t np = std::min(kSub, N - i0);
            int64_t open = 0;
            for (int64_t q = 0; q < np; ++q) {
                first[q] = ub[i0 + q] ? n_a : -1;
                open += first[q] == n_a;
            }
            for (int64_t a = 0; a < n_a && open > 0; ++a) {
                const int64_t p = found[a];
                for (int64_t q = 0; q < np; ++q) df[q] = dg[q] = T(0);
                for (int64_t d = 0; d < D; ++d) {
                    const T* rf = ef + d * N + i0;
                    const T* rg = eg + d * N + i0;
                    const T af = ef[d * N + p], ag = eg[d * N + p];
                    for (int64_t q = 0; q < np; ++q) {
                        const T x = rf[q] - af, y = rg[q] - ag;
                        df[q] += x * x;
                        dg[q] += y * y;
                    }
                }
                for (int64_t q = 0; q < np; ++q)
                    if (first[q] == n_a && (df[q] <= r2 || dg[q] <= r2)) first[q] = a, --open;
            }
            for (int64_t q = 0; q < np; ++q)
                if (first[q] >= 0) ++newly[first[q]];
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
