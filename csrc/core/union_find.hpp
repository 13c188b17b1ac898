// Disjoint sets with path halving and union by rank over 32-bit node ids.
#pragma once
#include <cstdint>
#include <vector>

#include "core/common.hpp"

namespace spoco {

class UnionFind {
public:
    explicit UnionFind(std::size_t n) : parent_(n), rank_(n, 0) {
        for (std::size_t i = 0; i < n; ++i) parent_[i] = static_cast<uint32_t>(i);
    }

    uint32_t find(uint32_t x) {
        while (parent_[x] != x) {
            parent_[x] = parent_[parent_[x]];  // path halving
            x = parent_[x];
        }
        return x;
    }

    /// Link two distinct roots; returns the surviving root.
    uint32_t link(uint32_t a, uint32_t b) {
        if (rank_[a] < rank_[b]) std::swap(a, b);
        parent_[b] = a;
        if (rank_[a] == rank_[b]) ++rank_[a];
        return a;
    }

    void prefetch(uint32_t x) const { SPOCO_PREFETCH(&parent_[x]); }
    std::size_t size() const { return parent_.size(); }

private:
    std::vector<uint32_t> parent_;
    std::vector<uint8_t> rank_;
};

}  // namespace spoco
