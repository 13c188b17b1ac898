// Eq. 12 of the SPOCO paper: edge weights from pixel embeddings.
//
//   w_ij = 1 - max((2 delta_d - |e_i - e_j|) / (2 delta_d), 0)^2
//
// w is 0 for identical embeddings (maximally attractive) and 1 for embeddings at
// least 2 delta_d apart (maximally repulsive). The mutex watershed sorts edges by
// priority: attractive edges by 1 - w, repulsive edges by w.
//
// These functions are shared by the CPU and CUDA code (compiled without FMA
// contraction on both sides), so both produce bit-identical weights.
#pragma once
#include <cmath>

#include "core/common.hpp"

namespace spoco {

/// Attractive priority 1 - w from the squared embedding distance.
template <class T>
SPOCO_HD T attractive_priority(T dist2, T two_delta_d) {
    T t = (two_delta_d - std::sqrt(dist2)) / two_delta_d;
    t = t > T(0) ? t : T(0);
    return t * t;
}

/// Priority of an edge: 1 - w on attractive channels, w on repulsive channels.
template <class T>
SPOCO_HD T edge_priority(T dist2, T two_delta_d, bool attractive) {
    const T a = attractive_priority(dist2, two_delta_d);
    return attractive ? a : T(1) - a;
}

}  // namespace spoco
