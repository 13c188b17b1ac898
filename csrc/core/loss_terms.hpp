// Per-element maths of the SPOCO loss reductions (Sec. 3.1-3.2), shared by the
// CPU kernels (csrc/core/loss_kernels.hpp) and their CUDA twins (csrc/cuda/loss.cu)
// so that the two cannot drift apart.
//
// Every anchor x pixel term is a function of the squared distance d = |e_i - a_k|^2
// (and, for consistency, d_g = |g_i - b_k|^2 in the g-embeddings). For each term,
// `values` gives the per-(anchor, pixel) summands of its outputs and `coef` the
// derivative c = dL/dd given the upstream gradients of the outputs; then
//   dL/de_i = 2 sum_k c_ki (e_i - a_k),   dL/da_k = -2 sum_i c_ki (e_i - a_k).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/common.hpp"

// SPOCO_LOSS_ISA names an inline namespace so that translation units compiled for
// different instruction sets (csrc/bindings/loss_cpu_entry.cpp) never share an
// instantiation (no ODR clash between AVX-512 and baseline code).
#ifndef SPOCO_LOSS_ISA
#define SPOCO_LOSS_ISA generic
#endif

namespace spoco::loss {
inline namespace SPOCO_LOSS_ISA {

/// The anchor x pixel reductions. The numbers are part of the Python <-> C++ contract.
enum Term : int {
    kSoftMask = 0,       ///< outputs: sum w S I_k, sum w S^2   with S = exp(-h d)  (Eq. 3-4)
    kUnlabeledPush = 1,  ///< output:  sum w [delta - sqrt d]_+^2                    (Eq. 6)
    kConsistency = 2,    ///< outputs: sum w S^f S^g, sum w (S^f)^2, sum w (S^g)^2  (Eq. 7)
};

SPOCO_HD constexpr int term_outputs(int term) { return term == kUnlabeledPush ? 1 : (term == kSoftMask ? 2 : 3); }

/// exp(x) for x <= 0: Cody-Waite reduction and a degree-6 polynomial (about 2 ulp),
/// written without calls so that compilers vectorise it (std::expf only vectorises
/// under -ffast-math). Underflows to 0 below -87.
SPOCO_HD float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    // round to nearest with the 1.5 * 2^23 trick (no floorf: it needs SSE4.1 to vectorise)
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
#if defined(__CUDA_ARCH__)
    scale = __int_as_float(bits);
#else
    std::memcpy(&scale, &bits, sizeof(scale));
#endif
    return p * scale;
}

SPOCO_HD double exp_nonpositive(double x) { return std::exp(x); }

/// Summands of `term` for one (anchor, pixel): d, d_g squared distances, `own` whether
/// the pixel belongs to the anchor's object, w the pixel weight, h = 1/(2 sigma^2),
/// delta the unlabeled-push margin. Writes term_outputs(term) values.
template <int TERM, class T>
SPOCO_HD void term_values(T d, T dg, bool own, T w, T h, T delta, T out[3]) {
    if constexpr (TERM == kSoftMask) {
        const T s = exp_nonpositive(-h * d);
        out[0] = own ? w * s : T(0);
        out[1] = w * s * s;
    } else if constexpr (TERM == kUnlabeledPush) {
        const T t = delta - std::sqrt(d);
        out[0] = t > T(0) ? w * t * t : T(0);
    } else {
        const T sf = exp_nonpositive(-h * d), sg = exp_nonpositive(-h * dg);
        out[0] = w * sf * sg;
        out[1] = w * sf * sf;
        out[2] = w * sg * sg;
    }
}

/// c = dL/dd for one (anchor, pixel) given the upstream gradients g0, g1 of the
/// anchor's first two outputs (consistency: S^g is a constant, its output has none).
template <int TERM, class T>
SPOCO_HD T term_coef(T d, T dg, bool own, T w, T h, T delta, T g0, T g1) {
    if constexpr (TERM == kSoftMask) {
        const T s = exp_nonpositive(-h * d);
        return -h * w * s * ((own ? g0 : T(0)) + T(2) * g1 * s);
    } else if constexpr (TERM == kUnlabeledPush) {
        const T r = std::sqrt(d);  // d[delta - r]_+^2 / d(r^2) = 1 - delta / r; 0 at r = 0 (subgradient)
        return (r < delta && r > T(0)) ? g0 * w * (T(1) - delta / r) : T(0);
    } else {
        const T sf = exp_nonpositive(-h * d), sg = exp_nonpositive(-h * dg);
        return -h * w * sf * (g0 * sg + T(2) * g1 * sf);
    }
}

/// Pull hinge (Eq. 1) of one pixel at squared distance d from its cluster mean:
/// [sqrt d - delta_v]_+^2, and its derivative with respect to d (1 - delta_v / sqrt d).
template <class T>
SPOCO_HD T pull_value(T d, T delta_v) {
    const T t = std::sqrt(d) - delta_v;
    return t > T(0) ? t * t : T(0);
}

template <class T>
SPOCO_HD T pull_coef(T d, T delta_v) {
    const T r = std::sqrt(d);
    return r > delta_v ? T(1) - delta_v / r : T(0);
}

/// Pixels per tile of the deterministic reductions: a function of N and K only (never
/// of the thread count), large enough that the per-tile partial sums (tiles x K x D)
/// stay below the size of the embeddings.
inline int64_t reduction_tile(int64_t K, int64_t min_tile) {
    int64_t tile = min_tile;
    while (tile < 4 * K) tile *= 2;
    return tile;
}

}  // namespace SPOCO_LOSS_ISA
}  // namespace spoco::loss
