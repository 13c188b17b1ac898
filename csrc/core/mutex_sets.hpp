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
#include <cstring>
#include <new>
#include <vector>

namespace spoco {

/// Linear-probing hash set of uint32 keys (0xFFFFFFFF is reserved as "empty").
class HandleSet {
public:
    static constexpr uint32_t kEmpty = 0xFFFFFFFFu;

    HandleSet() = default;
    HandleSet(const HandleSet&) = delete;
    HandleSet& operator=(const HandleSet&) = delete;
    HandleSet(HandleSet&& o) noexcept : slots_(o.slots_), size_(o.size_), mask_(o.mask_) {
        o.slots_ = nullptr; o.size_ = 0; o.mask_ = 0;
    }
    HandleSet& operator=(HandleSet&& o) noexcept {
        if (this != &o) { release(); std::swap(slots_, o.slots_); std::swap(size_, o.size_); std::swap(mask_, o.mask_); }
        return *this;
    }
    ~HandleSet() { release(); }

    uint32_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

    bool contains(uint32_t key) const {
        if (size_ == 0) return false;
        for (uint32_t i = slot_of(key);; i = (i + 1) & mask_) {
            const uint32_t s = slots_[i];
            if (s == key) return true;
            if (s == kEmpty) return false;
        }
    }

    /// Insert key; no effect if present.
    void insert(uint32_t key) {
        if (2 * (size_ + 1) > capacity()) grow();
        for (uint32_t i = slot_of(key);; i = (i + 1) & mask_) {
            const uint32_t s = slots_[i];
            if (s == key) return;
            if (s == kEmpty) { slots_[i] = key; ++size_; return; }
        }
    }

    /// Remove key if present (backward-shift deletion keeps probe chains intact).
    void erase(uint32_t key) {
        if (size_ == 0) return;
        uint32_t i = slot_of(key);
        while (slots_[i] != key) {
            if (slots_[i] == kEmpty) return;
            i = (i + 1) & mask_;
        }
        uint32_t hole = i;
        for (uint32_t j = (hole + 1) & mask_; slots_[j] != kEmpty; j = (j + 1) & mask_) {
            const uint32_t home = slot_of(slots_[j]);
            // Move slots_[j] into the hole unless its home lies cyclically in (hole, j].
            const bool home_between = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
            if (!home_between) { slots_[hole] = slots_[j]; hole = j; }
        }
        slots_[hole] = kEmpty;
        --size_;
    }

    template <class F>
    void for_each(F&& f) const {
        for (uint32_t i = 0; i < capacity(); ++i)
            if (slots_[i] != kEmpty) f(slots_[i]);
    }

    void release() {
        std::free(slots_);
        slots_ = nullptr; size_ = 0; mask_ = 0;
    }

private:
    uint32_t capacity() const { return slots_ ? mask_ + 1 : 0; }
    uint32_t slot_of(uint32_t key) const { return (key * 0x9E3779B1u) >> 7 & mask_; }

    void grow() {
        const uint32_t new_cap = slots_ ? 2 * (mask_ + 1) : 4;
        uint32_t* old = slots_;
        const uint32_t old_cap = capacity();
        slots_ = static_cast<uint32_t*>(std::malloc(sizeof(uint32_t) * new_cap));
        if (!slots_) throw std::bad_alloc();
        std::memset(slots_, 0xFF, sizeof(uint32_t) * new_cap);
        mask_ = new_cap - 1;
        size_ = 0;
        for (uint32_t i = 0; i < old_cap; ++i)
            if (old[i] != kEmpty) insert(old[i]);
        std::free(old);
    }

    uint32_t* slots_ = nullptr;
    uint32_t size_ = 0;
    uint32_t mask_ = 0;
};

/// Mutex constraints between union-find roots, through per-root handles.
class MutexSets {
public:
    explicit MutexSets(std::size_t n) : handle_(n), sets_(n) {
        for (std::size_t i = 0; i < n; ++i) handle_[i] = static_cast<uint32_t>(i);
    }

    /// Whether roots a and b must stay apart.
    bool has_mutex(uint32_t root_a, uint32_t root_b) const {
        const uint32_t ha = handle_[root_a], hb = handle_[root_b];
        const HandleSet& sa = sets_[ha];
        const HandleSet& sb = sets_[hb];
        if (sa.empty() || sb.empty()) return false;  // fast path: nothing to look up
        return sa.size() <= sb.size() ? sa.contains(hb) : sb.contains(ha);
    }

    void add_mutex(uint32_t root_a, uint32_t root_b) {
        const uint32_t ha = handle_[root_a], hb = handle_[root_b];
        sets_[ha].insert(hb);
        sets_[hb].insert(ha);
    }

    /// Roots a and b were linked into `root` (one of them): merge their sets.
    void merge(uint32_t root_a, uint32_t root_b, uint32_t root) {
        uint32_t big = handle_[root_a], small = handle_[root_b];
        if (sets_[big].size() < sets_[small].size()) std::swap(big, small);
        handle_[root] = big;
        HandleSet& sb = sets_[big];
        HandleSet& ss = sets_[small];
        if (ss.empty()) return;
        ss.for_each([&](uint32_t partner) {
            HandleSet& sp = sets_[partner];
            sp.erase(small);
            sp.insert(big);
            sb.insert(partner);
        });
        ss.release();
    }

    void prefetch(uint32_t root) const { SPOCO_PREFETCH(&handle_[root]); }

private:
    std::vector<uint32_t> handle_;
    std::vector<HandleSet> sets_;
};

}  // namespace spoco
