// Mutex constraints as lists of node ids, checked through the union-find.
//
// A repulsive edge (u, v) between clusters A and B appends v to A's list and u to
// B's list. A and B are mutually exclusive iff the list of one holds a node of
// the other, so has_mutex scans the shorter list and asks the union-find for each
// entry's root. Merging appends the shorter list to the longer one: unlike sets of
// cluster ids, no other cluster's list is ever rewritten, so a merge touches two
// lists, not every partner. Repeated checks of the same pair (an object boundary
// crossed by many attractive edges) are answered by a one-entry cache per list.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "core/union_find.hpp"

namespace spoco {

/// Append-only list of uint32 node ids; up to kInline ids live inside the
/// 24-byte object (most clusters have few mutexes), longer lists on the heap.
class NodeList {
public:
    static constexpr uint32_t kInline = 3;
    static constexpr uint32_t kNoNode = 0xFFFFFFFFu;

    NodeList() = default;
    NodeList(const NodeList&) = delete;
    NodeList& operator=(const NodeList&) = delete;
    NodeList(NodeList&& o) noexcept { steal(o); }
    NodeList& operator=(NodeList&& o) noexcept {
        if (this != &o) { release(); steal(o); }
        return *this;
    }
    ~NodeList() { release(); }

    uint32_t size() const { return size_; }
    uint32_t cache() const { return u_.small.cache; }
    void set_cache(uint32_t node) { u_.small.cache = node; }
    uint32_t back() const { return data()[size_ - 1]; }
    const uint32_t* data() const { return cap_ ? u_.big.heap : u_.small.ids; }

    void push(uint32_t node) {
        if (size_ == capacity()) grow(size_ + size_ / 2 + 4);  // x1.5: lists hold most of the memory
        (cap_ ? u_.big.heap : u_.small.ids)[size_++] = node;
    }

    void append(const NodeList& o) {
        if (size_ + o.size_ > capacity()) grow(std::max(capacity() + capacity() / 2, size_ + o.size_));
        std::memcpy((cap_ ? u_.big.heap : u_.small.ids) + size_, o.data(), sizeof(uint32_t) * o.size_);
        size_ += o.size_;
    }

    void release() {
        if (cap_) std::free(u_.big.heap);
        size_ = 0;
        cap_ = 0;
        u_.small.cache = kNoNode;
    }

private:
    uint32_t capacity() const { return cap_ ? cap_ : kInline; }

    void grow(uint32_t cap) {
        uint32_t* p;
        if (cap_) {  // realloc often grows in place: less copying and fragmentation
            p = static_cast<uint32_t*>(std::realloc(u_.big.heap, sizeof(uint32_t) * cap));
            if (!p) throw std::bad_alloc();
        } else {
            p = static_cast<uint32_t*>(std::malloc(sizeof(uint32_t) * cap));
            if (!p) throw std::bad_alloc();
            std::memcpy(p, u_.small.ids, sizeof(uint32_t) * size_);
        }
        u_.big.heap = p;
        cap_ = cap;
    }

    void steal(NodeList& o) {
        size_ = o.size_; cap_ = o.cap_; u_ = o.u_;
        o.size_ = 0; o.cap_ = 0; o.u_.small.cache = kNoNode;
    }

    uint32_t size_ = 0;
    uint32_t cap_ = 0;  // 0: inline storage
    // Both layouts start with `cache`: a node of the last cluster this list was
    // found to exclude (kNoNode if none).
    union Storage {
        struct { uint32_t cache; uint32_t ids[kInline]; } small;
        struct { uint32_t cache; uint32_t* heap; } big;
    } u_{{kNoNode, {}}};
};

/// Mutex lists of clusters. A cluster's list index (its handle) lives in its
/// union-find root payload; clusters without mutexes have none
/// (UnionFind::kNoPayload), so most checks touch no list at all.
class MutexLists {
public:
    static constexpr uint32_t kNone = UnionFind::kNoPayload;

    /// At most one live list per node: reserving (untouched) address space up
    /// front avoids the copy, and the doubled peak, of a growing vector.
    explicit MutexLists(std::size_t n_nodes) { lists_.reserve(n_nodes); }

    /// Whether the clusters of roots ru and rv must stay apart.
    bool has_mutex(UnionFind& uf, uint32_t ru, uint32_t rv) {
        const uint32_t hu = uf.payload(ru), hv = uf.payload(rv);
        if (hu == kNone || hv == kNone) return false;  // fast path: no list to scan
        NodeList& lu = lists_[hu];
        NodeList& lv = lists_[hv];
        if (lu.cache() != NodeList::kNoNode && uf.find(lu.cache()) == rv) return true;
        if (lv.cache() != NodeList::kNoNode && uf.find(lv.cache()) == ru) return true;
        NodeList& scan = lu.size() <= lv.size() ? lu : lv;
        const uint32_t other = &scan == &lu ? rv : ru;
        const uint32_t* ids = scan.data();
        const uint32_t n = scan.size();
        constexpr uint32_t kAhead = 8;
        for (uint32_t i = 0; i < std::min(n, kAhead); ++i) uf.prefetch(ids[i]);
        for (uint32_t i = 0; i < n; ++i) {
            if (i + kAhead < n) uf.prefetch(ids[i + kAhead]);
            if (uf.find(ids[i]) == other) {
                scan.set_cache(ids[i]);
                return true;
            }
        }
        return false;
    }

    /// Record the repulsive edge (u, v) between the clusters of roots ru and rv.
    /// Skipped when the last mutex recorded for ru already separates it from rv
    /// (repulsive edges between the same two clusters often come in runs).
    void add_mutex(UnionFind& uf, uint32_t ru, uint32_t rv, uint32_t u, uint32_t v) {
        NodeList& lu = list_of(uf, ru);
        if (lu.size() && uf.find(lu.back()) == rv) return;
        lu.push(v);
        list_of(uf, rv).push(u);
    }

    /// Clusters with handles ha and hb were merged; returns the merged handle.
    uint32_t merge(uint32_t ha, uint32_t hb) {
        if (ha == kNone) return hb;
        if (hb == kNone) return ha;
        uint32_t big = ha, small = hb;
        if (lists_[big].size() < lists_[small].size()) std::swap(big, small);
        lists_[big].append(lists_[small]);
        lists_[small].release();
        free_.push_back(small);
        return big;
    }

    /// Prefetch the list header of a handle (no-op for kNone).
    void prefetch(uint32_t handle) const {
        if (handle != kNone) SPOCO_PREFETCH(&lists_[handle]);
    }

private:
    NodeList& list_of(UnionFind& uf, uint32_t root) {
        uint32_t h = uf.payload(root);
        if (h == kNone) {
            if (!free_.empty()) {
                h = free_.back();
                free_.pop_back();
            } else {
                h = static_cast<uint32_t>(lists_.size());
                lists_.emplace_back();
            }
            uf.set_payload(root, h);
        }
        return lists_[h];
    }

    std::vector<NodeList> lists_;
    std::vector<uint32_t> free_;
};

}  // namespace spoco
