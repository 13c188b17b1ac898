// Disjoint sets over 31-bit node ids with path halving and union by rank.
//
// Each root carries a 31-bit payload in its own parent word (flag bit set), so a
// find returns the root and its payload from the same cache line; the mutex
// watershed keeps the index of the root's mutex set there.
//
// Words are read and written as relaxed atomics (plain loads and stores on x86), so
// that threads may find() in trees another thread links or compresses: a parent
// word only ever moves to an ancestor, so every word read names an ancestor of the
// node, and two finds that return the same node prove that the two nodes are in one
// set (the parallel mutex watershed, mutex_watershed_parallel.hpp, relies on this).
#pragma once
#include <cstdint>
#include <algorithm>

#include "core/common.hpp"

namespace spoco {

class UnionFind {
public:
    static constexpr uint32_t kRootFlag = 0x80000000u;
    static constexpr uint32_t kMaxNodes = 0x7FFFFFFFu;
    static constexpr uint32_t kNoPayload = 0x7FFFFFFFu;

    explicit UnionFind(std::size_t n)
        : n_(n), storage_(malloc_huge_or_throw(n * (sizeof(uint32_t) + 1))),
          word_(static_cast<uint32_t*>(storage_.get())), rank_(reinterpret_cast<uint8_t*>(word_ + n)) {
        std::fill(word_, word_ + n, kRootFlag | kNoPayload);
        std::fill(rank_, rank_ + n, uint8_t{0});
    }

    uint32_t find(uint32_t x) {
        uint32_t p = load(x);
        while (!(p & kRootFlag)) {
            const uint32_t gp = load(p);
            if (gp & kRootFlag) return p;
            store(x, gp);  // path halving
            x = gp;
            p = load(x);
        }
        return x;
    }

    uint32_t payload(uint32_t root) const { return load(root) & ~kRootFlag; }
    void set_payload(uint32_t root, uint32_t value) { store(root, kRootFlag | value); }

    /// Link two distinct roots; returns the surviving root (its payload is kept).
    uint32_t link(uint32_t a, uint32_t b) {
        if (rank_[a] < rank_[b]) std::swap(a, b);
        store(b, a);
        if (rank_[a] == rank_[b]) ++rank_[a];
        return a;
    }

    /// Parent (or root payload) word of x, for look-ahead prefetching.
    uint32_t peek(uint32_t x) const { return load(x); }
    void prefetch(uint32_t x) const { SPOCO_PREFETCH(&word_[x]); }
    std::size_t size() const { return n_; }

private:
    uint32_t load(uint32_t x) const { return SPOCO_RELAXED_LOAD(word_[x]); }
    void store(uint32_t x, uint32_t w) { SPOCO_RELAXED_STORE(word_[x], w); }

    std::size_t n_;
    MallocPtr storage_;  // the words, then the ranks
    uint32_t* word_;
    uint8_t* rank_;
};

}  // namespace spoco
