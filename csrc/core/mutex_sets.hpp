// Mutex constraints between clusters of the mutex watershed.
//
// Each cluster owns a "handle"; handle h has an open-addressing hash set of the
// handles it must never be merged with. Sets are allocated lazily (most clusters
// never get a mutex), checked through the smaller side, and merged smaller into
// larger: the merged cluster keeps the larger set's handle, and every partner of
// the smaller set has its entry renamed. Each entry therefore moves O(log n) times.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "core/union_find.hpp"

namespace spoco {

/// Set of uint32 keys (0xFFFFFFFF is reserved). Up to kInline keys live unordered
/// inside the 32-byte object (most clusters have few mutexes: one cache line, no
/// allocation, linear scan); larger sets switch to a heap-allocated
/// linear-probing hash table at load <= 3/4.
class HandleSet {
public:
    static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
    static constexpr uint32_t kInline = 6;

    HandleSet() = default;
    HandleSet(const HandleSet&) = delete;
    HandleSet& operator=(const HandleSet&) = delete;
    HandleSet(HandleSet&& o) noexcept { steal(o); }
    HandleSet& operator=(HandleSet&& o) noexcept {
        if (this != &o) { release(); steal(o); }
        return *this;
    }
    ~HandleSet() { release(); }

    uint32_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

    bool contains(uint32_t key) const {
        if (!hashed()) {
            for (uint32_t i = 0; i < size_; ++i)
                if (u_.keys[i] == key) return true;
            return false;
        }
        for (uint32_t i = slot_of(key);; i = (i + 1) & mask_) {
            const uint32_t s = u_.slots[i];
            if (s == key) return true;
            if (s == kEmpty) return false;
        }
    }

    /// Insert key; no effect if present.
    void insert(uint32_t key) {
        if (!hashed()) {
            for (uint32_t i = 0; i < size_; ++i)
                if (u_.keys[i] == key) return;
            if (size_ < kInline) { u_.keys[size_++] = key; return; }
            to_hash(16);  // power of two, load 7/16
        } else if (4 * (size_ + 1) > 3 * (mask_ + 1)) {  // max load 3/4
            rehash(2 * (mask_ + 1));
        }
        hash_insert(key);
    }

    /// Remove key if present.
    void erase(uint32_t key) {
        if (!hashed()) {
            for (uint32_t i = 0; i < size_; ++i)
                if (u_.keys[i] == key) { u_.keys[i] = u_.keys[--size_]; return; }
            return;
        }
        uint32_t* slots = u_.slots;
        uint32_t i = slot_of(key);
        while (slots[i] != key) {
            if (slots[i] == kEmpty) return;
            i = (i + 1) & mask_;
        }
        // Backward-shift deletion keeps every probe chain intact.
        uint32_t hole = i;
        for (uint32_t j = (hole + 1) & mask_; slots[j] != kEmpty; j = (j + 1) & mask_) {
            const uint32_t home = slot_of(slots[j]);
            const bool home_between = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
            if (!home_between) { slots[hole] = slots[j]; hole = j; }
        }
        slots[hole] = kEmpty;
        --size_;
    }

    /// Prefetch the memory a lookup of key touches first.
    void prefetch_probe(uint32_t key) const {
        if (hashed()) SPOCO_PREFETCH(&u_.slots[slot_of(key)]);
    }

    template <class F>
    void for_each(F&& f) const {
        if (!hashed()) {
            for (uint32_t i = 0; i < size_; ++i) f(u_.keys[i]);
            return;
        }
        for (uint32_t i = 0; i <= mask_; ++i)
            if (u_.slots[i] != kEmpty) f(u_.slots[i]);
    }

    void release() {
        if (hashed()) std::free(u_.slots);
        size_ = 0;
        mask_ = 0;
    }

private:
    bool hashed() const { return mask_ != 0; }
    uint32_t slot_of(uint32_t key) const { return ((key * 0x9E3779B1u) >> 7) & mask_; }

    void steal(HandleSet& o) {
        size_ = o.size_; mask_ = o.mask_; u_ = o.u_;
        o.size_ = 0; o.mask_ = 0;
    }

    static uint32_t* allocate(uint32_t capacity) {
        auto* p = static_cast<uint32_t*>(std::malloc(sizeof(uint32_t) * capacity));
        if (!p) throw std::bad_alloc();
        std::memset(p, 0xFF, sizeof(uint32_t) * capacity);
        return p;
    }

    void hash_insert(uint32_t key) {
        for (uint32_t i = slot_of(key);; i = (i + 1) & mask_) {
            const uint32_t s = u_.slots[i];
            if (s == key) return;
            if (s == kEmpty) { u_.slots[i] = key; ++size_; return; }
        }
    }

    void to_hash(uint32_t capacity) {
        uint32_t keys[kInline];
        std::memcpy(keys, u_.keys, sizeof keys);
        const uint32_t n = size_;
        u_.slots = allocate(capacity);
        mask_ = capacity - 1;
        size_ = 0;
        for (uint32_t i = 0; i < n; ++i) hash_insert(keys[i]);
    }

    void rehash(uint32_t capacity) {
        uint32_t* old = u_.slots;
        const uint32_t old_cap = mask_ + 1;
        u_.slots = allocate(capacity);
        mask_ = capacity - 1;
        size_ = 0;
        for (uint32_t i = 0; i < old_cap; ++i)
            if (old[i] != kEmpty) hash_insert(old[i]);
        std::free(old);
    }

    uint32_t size_ = 0;
    uint32_t mask_ = 0;  // 0: inline keys; else hash capacity - 1
    union Storage {
        uint32_t keys[kInline];
        uint32_t* slots;
    } u_{};
};

/// Mutex constraints between clusters, kept as a pool of HandleSets.
///
/// A cluster's set index (its "handle") lives in its union-find root payload;
/// clusters without mutexes have none (UnionFind::kNoPayload), so the common
/// checks touch no set at all. Handles are stable while entries are renamed on
/// merges, and released sets are recycled.
class MutexSets {
public:
    static constexpr uint32_t kNone = UnionFind::kNoPayload;

    /// At most one live set per node: reserving (untouched) address space up
    /// front avoids the copy, and the doubled peak, of a growing vector.
    explicit MutexSets(std::size_t n_nodes) { sets_.reserve(n_nodes); }

    /// Whether clusters with handles ha and hb must stay apart.
    bool has_mutex(uint32_t ha, uint32_t hb) const {
        if (ha == kNone || hb == kNone) return false;  // fast path: nothing to look up
        const HandleSet& sa = sets_[ha];
        const HandleSet& sb = sets_[hb];
        return sa.size() <= sb.size() ? sa.contains(hb) : sb.contains(ha);
    }

    /// Add a mutex between the clusters of roots a and b (creating their sets).
    void add_mutex(UnionFind& uf, uint32_t root_a, uint32_t root_b) {
        const uint32_t ha = handle_of(uf, root_a), hb = handle_of(uf, root_b);
        sets_[ha].insert(hb);
        sets_[hb].insert(ha);
    }

    /// Clusters with handles ha and hb were merged; returns the merged handle.
    /// Renaming the smaller set's partners is a chain of cache misses (their
    /// headers, then their probe slots), so it is software-pipelined: partner
    /// i + 2d gets its header prefetched and partner i + d its slots while
    /// partner i is renamed.
    uint32_t merge(uint32_t ha, uint32_t hb) {
        if (ha == kNone) return hb;
        if (hb == kNone) return ha;
        uint32_t big = ha, small = hb;
        if (sets_[big].size() < sets_[small].size()) std::swap(big, small);
        partners_.clear();
        sets_[small].for_each([&](uint32_t partner) { partners_.push_back(partner); });
        sets_[small].release();
        free_.push_back(small);
        constexpr std::size_t d = 8;
        const std::size_t n = partners_.size();
        HandleSet& sb = sets_[big];
        for (std::size_t i = 0; i < n; ++i) {
            if (i + 2 * d < n) SPOCO_PREFETCH(&sets_[partners_[i + 2 * d]]);
            if (i + d < n) {
                const uint32_t ahead = partners_[i + d];
                sets_[ahead].prefetch_probe(small);
                sets_[ahead].prefetch_probe(big);
                sb.prefetch_probe(ahead);
            }
            HandleSet& sp = sets_[partners_[i]];
            sp.erase(small);
            sp.insert(big);
            sb.insert(partners_[i]);
        }
        return big;
    }

    /// Prefetch the set header of a handle (no-op for kNone).
    void prefetch(uint32_t handle) const {
        if (handle != kNone) SPOCO_PREFETCH(&sets_[handle]);
    }

private:
    uint32_t handle_of(UnionFind& uf, uint32_t root) {
        uint32_t h = uf.payload(root);
        if (h != kNone) return h;
        if (!free_.empty()) {
            h = free_.back();
            free_.pop_back();
        } else {
            h = static_cast<uint32_t>(sets_.size());
            sets_.emplace_back();
        }
        uf.set_payload(root, h);
        return h;
    }

    std::vector<HandleSet> sets_;
    std::vector<uint32_t> free_;
    std::vector<uint32_t> partners_;  // scratch of merge()
};

}  // namespace spoco
