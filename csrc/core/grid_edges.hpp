// Edges of a pixel grid with offsets: which edges exist and in which order.
//
// Grids of 1-3 dimensions are handled as 3D (z, y, x) with leading unit axes.
// Channel c with offset o links pixel u to pixel u + o; its edge id is c * N + u
// (channel-major, then pixel in C order). The first `n_attractive` channels are
// attractive, the rest repulsive. An edge exists when both ends are inside the
// grid, both are in the foreground mask (if any) and, for repulsive channels,
// it survives the stride rule: regular strides keep pixels whose coordinates are
// multiples of the stride; randomized strides keep each edge with probability
// 1 / prod(strides), decided by a hash of (seed, edge id) so the choice does not
// depend on thread count or traversal order.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "core/common.hpp"

namespace spoco {

using Offset = std::array<int64_t, 3>;

struct GridSpec {
    std::array<int64_t, 3> shape{1, 1, 1};   // (z, y, x)
    std::vector<Offset> offsets;              // one per channel, (dz, dy, dx)
    int n_attractive = 0;                     // channels [0, n_attractive) attract
    std::array<int64_t, 3> strides{1, 1, 1};  // repulsive channels only
    bool randomize_strides = false;
    uint64_t seed = 0;
    const uint8_t* mask = nullptr;            // N bytes, nonzero = foreground; or null

    std::size_t n_pixels() const { return static_cast<std::size_t>(shape[0] * shape[1] * shape[2]); }
    std::size_t n_channels() const { return offsets.size(); }
    int64_t linear_offset(std::size_t c) const {
        const Offset& o = offsets[c];
        return (o[0] * shape[1] + o[1]) * shape[2] + o[2];
    }
};

inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/// Walks the rows (channel, z, y) of a grid and decides which edges exist.
class GridEdges {
public:
    explicit GridEdges(const GridSpec& g) : g_(g), n_(g.n_pixels()) {
        const int64_t keep = g.strides[0] * g.strides[1] * g.strides[2];
        strided_ = keep > 1;
        // keep with probability 1/keep: hash < floor(2^64 / keep)
        threshold_ = keep > 1 ? ~uint64_t(0) / static_cast<uint64_t>(keep) : ~uint64_t(0);
    }

    const GridSpec& spec() const { return g_; }
    std::size_t n_rows() const { return g_.n_channels() * g_.shape[0] * g_.shape[1]; }

    struct Row {
        std::size_t channel;
        int64_t z, y;        // source row
        int64_t x0, x1;      // x range with both ends inside the grid (empty if x0 >= x1)
        std::size_t base;    // linear index of (z, y, 0)
        int64_t lin;         // linear offset of the channel
        bool attractive;
    };

    Row row(std::size_t r) const {
        const int64_t Y = g_.shape[1], Z = g_.shape[0], X = g_.shape[2];
        Row w;
        w.y = static_cast<int64_t>(r % Y);
        w.z = static_cast<int64_t>((r / Y) % Z);
        w.channel = r / (Y * Z);
        const Offset& o = g_.offsets[w.channel];
        w.attractive = static_cast<int>(w.channel) < g_.n_attractive;
        w.base = static_cast<std::size_t>((w.z * Y + w.y) * X);
        w.lin = g_.linear_offset(w.channel);
        const int64_t zz = w.z + o[0], yy = w.y + o[1];
        const bool row_ok = zz >= 0 && zz < Z && yy >= 0 && yy < Y &&
                            (w.attractive || g_.randomize_strides || !strided_ ||
                             (w.z % g_.strides[0] == 0 && w.y % g_.strides[1] == 0));
        w.x0 = std::max<int64_t>(0, -o[2]);
        w.x1 = row_ok ? std::min<int64_t>(X, X - o[2]) : w.x0;
        return w;
    }

    /// Whether the in-bounds edge at column x of row w exists.
    bool keep(const Row& w, int64_t x) const {
        const std::size_t u = w.base + static_cast<std::size_t>(x);
        if (g_.mask && (!g_.mask[u] || !g_.mask[u + w.lin])) return false;
        if (w.attractive || !strided_) return true;
        if (!g_.randomize_strides) return x % g_.strides[2] == 0;
        return splitmix64(g_.seed ^ splitmix64(edge_id(w, x))) < threshold_;
    }

    /// Whether every in-bounds column of the row exists (no per-edge test needed).
    bool dense(const Row& w) const { return !g_.mask && (w.attractive || !strided_); }

    uint64_t edge_id(const Row& w, int64_t x) const {
        return static_cast<uint64_t>(w.channel) * n_ + w.base + static_cast<uint64_t>(x);
    }

private:
    const GridSpec& g_;
    std::size_t n_;
    bool strided_ = false;
    uint64_t threshold_ = 0;
};

}  // namespace spoco
