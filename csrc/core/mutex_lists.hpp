// Mutex constraints as lists of node ids, checked through the union-find.
//
// A repulsive edge (u, v) between clusters A and B appends v to A's list and u to
// B's list. A and B are mutually exclusive iff the list of one holds a node of
// the other, so has_mutex scans the shorter list and asks the union-find for each
// entry's root. A list keeps its first ids in its header (most clusters have few
// mutexes) and the rest in a chain of 64-byte chunks, so merging two clusters
// copies at most the few header ids and splices one chain onto the other: no list
// grows by reallocation, nothing is freed, and no other cluster's list is
// rewritten. Repeated checks of the same pair (an object boundary crossed by many
// attractive edges) are answered by a one-entry cache per list. Neither the order
// of a list's entries nor the cache changes any answer, only how fast it comes.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

#include "core/common.hpp"
#include "core/union_find.hpp"

namespace spoco {

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
        List& lu = lists_[hu];
        List& lv = lists_[hv];
        if (lu.cache != kNoNode && uf.find(lu.cache) == rv) return true;
        if (lv.cache != kNoNode && uf.find(lv.cache) == ru) return true;
        List& scan = lu.size <= lv.size ? lu : lv;
        const uint32_t other = &scan == &lu ? rv : ru;
        const uint32_t n_inline = scan.size < kInline ? scan.size : kInline;
        for (uint32_t i = 0; i < n_inline; ++i) {
            if (uf.find(scan.ids[i]) == other) {
                scan.cache = scan.ids[i];
                return true;
            }
        }
        for (uint32_t c = scan.head; c != kNoChunk;) {
            const Chunk& chunk = chunks_[c];
            c = chunk.next;
            if (c != kNoChunk) SPOCO_PREFETCH(&chunks_[c]);
            for (uint32_t i = 0; i < chunk.count; ++i) uf.prefetch(chunk.ids[i]);
            for (uint32_t i = 0; i < chunk.count; ++i) {
                if (uf.find(chunk.ids[i]) == other) {
                    scan.cache = chunk.ids[i];
                    return true;
                }
            }
        }
        return false;
    }

    /// Record the repulsive edge (u, v) between the clusters of roots ru and rv.
    /// Skipped when the last mutex recorded for ru already separates it from rv
    /// (repulsive edges between the same two clusters often come in runs).
    void add_mutex(UnionFind& uf, uint32_t ru, uint32_t rv, uint32_t u, uint32_t v) {
        const uint32_t hu = handle_of(uf, ru);
        if (lists_[hu].size && uf.find(back(lists_[hu])) == rv) return;
        push(hu, v);
        push(handle_of(uf, rv), u);
    }

    /// Clusters with handles ha and hb were merged; returns the merged handle.
    uint32_t merge(uint32_t ha, uint32_t hb) {
        if (ha == kNone) return hb;
        if (hb == kNone) return ha;
        if (lists_[ha].size < lists_[hb].size) std::swap(ha, hb);
        List& small = lists_[hb];
        const uint32_t n_inline = small.size < kInline ? small.size : kInline;
        for (uint32_t i = 0; i < n_inline; ++i) push(ha, small.ids[i]);
        List& big = lists_[ha];
        if (small.head != kNoChunk) {
            if (big.head == kNoChunk) {
                big.head = small.head;
            } else {
                chunks_[big.tail].next = small.head;
            }
            big.tail = small.tail;
            big.size += small.size - n_inline;
        }
        small = List{};
        free_.push_back(hb);
        return ha;
    }

    /// Prefetch the list header of a handle (no-op for kNone).
    void prefetch(uint32_t handle) const {
        if (handle != kNone) SPOCO_PREFETCH(&lists_[handle]);
    }

private:
    static constexpr uint32_t kNoNode = 0xFFFFFFFFu;
    static constexpr uint32_t kNoChunk = 0xFFFFFFFFu;
    static constexpr uint32_t kPerChunk = 14;
    static constexpr uint32_t kInline = 4;

    // One cache line: the next chunk of the chain, how many ids this one holds, the ids.
    struct alignas(64) Chunk {
        uint32_t next;
        uint32_t count;
        uint32_t ids[kPerChunk];
    };

    // A cluster's chain: new ids go to `head`, merges splice after `tail`; `cache`
    // is a node of the last cluster this list was found to exclude.
    struct List {
        uint32_t head = kNoChunk, tail = kNoChunk, size = 0, cache = kNoNode;
        uint32_t ids[kInline];  // the first ids: most clusters have few mutexes
    };

    // Chunks in fixed blocks: growing never moves (or doubles the memory of) the
    // chunks already made.
    class ChunkPool {
    public:
        Chunk& operator[](uint32_t i) { return blocks_[i >> kBlockBits][i & kBlockMask]; }
        const Chunk& operator[](uint32_t i) const { return blocks_[i >> kBlockBits][i & kBlockMask]; }
        uint32_t make() {
            if (size_ == kNoChunk) throw std::length_error("too many mutex constraints for 32-bit chunk ids");
            if ((size_ & kBlockMask) == 0) {
                void* p = std::aligned_alloc(alignof(Chunk), sizeof(Chunk) << kBlockBits);
                if (!p) throw std::bad_alloc();
                blocks_.emplace_back(static_cast<Chunk*>(p));
            }
            return size_++;
        }

    private:
        static constexpr uint32_t kBlockBits = 14;  // 1 MiB blocks
        static constexpr uint32_t kBlockMask = (1u << kBlockBits) - 1;
        std::vector<std::unique_ptr<Chunk[], FreeDeleter>> blocks_;
        uint32_t size_ = 0;
    };

    uint32_t back(const List& l) const {
        if (l.head == kNoChunk) return l.ids[l.size - 1];
        const Chunk& c = chunks_[l.head];
        return c.ids[c.count - 1];
    }

    void push(uint32_t h, uint32_t node) {
        List& l = lists_[h];
        if (l.size < kInline) {
            l.ids[l.size++] = node;
            return;
        }
        if (l.head == kNoChunk || chunks_[l.head].count == kPerChunk) {
            const uint32_t c = chunks_.make();
            chunks_[c].next = l.head;
            chunks_[c].count = 0;
            if (l.head == kNoChunk) l.tail = c;
            l.head = c;
        }
        Chunk& c = chunks_[l.head];
        c.ids[c.count++] = node;
        ++l.size;
    }

    uint32_t handle_of(UnionFind& uf, uint32_t root) {
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
        return h;
    }

    std::vector<List> lists_;
    std::vector<uint32_t> free_;
    ChunkPool chunks_;
};

}  // namespace spoco
