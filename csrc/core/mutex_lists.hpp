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
//
// Threads: list headers live in storage of fixed capacity (one per node, untouched
// until used), new headers are numbered by an atomic counter, and every thread that
// adds lists or chunks does so in its own arena (free headers, chunk pool; a chunk's
// id carries its arena). So threads may work at once on lists no other thread
// touches: the parallel loop (mutex_watershed_parallel.hpp) guarantees that.
#pragma once
#include <atomic>
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

    static constexpr int kMaxArenas = 8;

    /// At most one live list per node: reserving (untouched) address space up
    /// front avoids the copy, and the doubled peak, of a growing vector, and lets
    /// threads add lists without moving the others. `arenas` threads may add lists.
    explicit MutexLists(std::size_t n_nodes, int arenas = 1)
        : storage_(malloc_huge_or_throw(sizeof(List) * (n_nodes + kHandleBlock * static_cast<std::size_t>(arenas)))),
          lists_(static_cast<List*>(storage_.get())),
          arenas_(static_cast<std::size_t>(arenas)),
          // Chunk blocks in huge pages only when the headers are (a small input would
          // zero a whole 2 MiB page for its first few chunks).
          chunks_(static_cast<uint32_t>(arenas), sizeof(List) * n_nodes >= kHugePageBytes) {
        if (arenas < 1 || arenas > kMaxArenas) throw std::invalid_argument("MutexLists: 1 to 8 arenas");
    }

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
    /// `arena`: the calling thread's (new lists and chunks come from it).
    void add_mutex(UnionFind& uf, uint32_t ru, uint32_t rv, uint32_t u, uint32_t v, int arena = 0) {
        const uint32_t hu = handle_of(uf, ru, arena);
        if (lists_[hu].size && uf.find(back(lists_[hu])) == rv) return;
        push(hu, v, arena);
        push(handle_of(uf, rv, arena), u, arena);
    }

    /// Clusters with handles ha and hb were merged; returns the merged handle.
    uint32_t merge(uint32_t ha, uint32_t hb, int arena = 0) {
        if (ha == kNone) return hb;
        if (hb == kNone) return ha;
        if (lists_[ha].size < lists_[hb].size) std::swap(ha, hb);
        List& small = lists_[hb];
        const uint32_t n_inline = small.size < kInline ? small.size : kInline;
        for (uint32_t i = 0; i < n_inline; ++i) push(ha, small.ids[i], arena);
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
        arenas_[static_cast<std::size_t>(arena)].free.push_back(hb);
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
    static constexpr uint32_t kHandleBlock = 256;  // new list headers an arena takes at once

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

    // Chunks in fixed blocks, one pool per arena: growing never moves (or doubles
    // the memory of) the chunks already made, and the table of blocks is reserved
    // whole, so a pool grows while other threads read the chunks it made before.
    // A chunk's id is its arena (top 3 bits) and its index in that arena's pool.
    class ChunkPools {
    public:
        ChunkPools(uint32_t arenas, bool huge) : pools_(arenas), huge_(huge) {
            for (Pool& p : pools_) p.blocks.reserve(kMaxBlocks);
        }
        Chunk& operator[](uint32_t c) {
            return pools_[c >> kIndexBits].blocks[(c & kIndexMask) >> kBlockBits][c & kBlockMask];
        }
        const Chunk& operator[](uint32_t c) const {
            return pools_[c >> kIndexBits].blocks[(c & kIndexMask) >> kBlockBits][c & kBlockMask];
        }
        uint32_t make(int arena) {
            Pool& p = pools_[static_cast<std::size_t>(arena)];
            if (p.size == kIndexMask) throw std::length_error("too many mutex constraints for 32-bit chunk ids");
            if ((p.size & kBlockMask) == 0) {
                p.blocks.emplace_back(static_cast<Chunk*>(malloc_huge_or_throw(sizeof(Chunk) << kBlockBits, huge_).release()));
            }
            return (static_cast<uint32_t>(arena) << kIndexBits) | p.size++;
        }

    private:
        static constexpr uint32_t kBlockBits = 15;  // 2 MiB blocks: one huge page each
        static constexpr uint32_t kBlockMask = (1u << kBlockBits) - 1;
        static constexpr uint32_t kIndexBits = 29;
        static constexpr uint32_t kIndexMask = (1u << kIndexBits) - 1;  // kNoChunk's index: never made
        static constexpr std::size_t kMaxBlocks = (std::size_t(1) << kIndexBits) >> kBlockBits;
        struct alignas(64) Pool {  // a cache line each: pools of other threads stay out of it
            std::vector<std::unique_ptr<Chunk[], FreeDeleter>> blocks;
            uint32_t size = 0;
        };
        std::vector<Pool> pools_;
        bool huge_;
    };

    uint32_t back(const List& l) const {
        if (l.head == kNoChunk) return l.ids[l.size - 1];
        const Chunk& c = chunks_[l.head];
        return c.ids[c.count - 1];
    }

    void push(uint32_t h, uint32_t node, int arena) {
        List& l = lists_[h];
        if (l.size < kInline) {
            l.ids[l.size++] = node;
            return;
        }
        if (l.head == kNoChunk || chunks_[l.head].count == kPerChunk) {
            const uint32_t c = chunks_.make(arena);
            chunks_[c].next = l.head;
            chunks_[c].count = 0;
            if (l.head == kNoChunk) l.tail = c;
            l.head = c;
        }
        Chunk& c = chunks_[l.head];
        c.ids[c.count++] = node;
        ++l.size;
    }

    uint32_t handle_of(UnionFind& uf, uint32_t root, int arena) {
        uint32_t h = uf.payload(root);
        if (h == kNone) {
            Arena& a = arenas_[static_cast<std::size_t>(arena)];
            if (!a.free.empty()) {
                h = a.free.back();
                a.free.pop_back();
            } else {
                // Every header is live, free or among the kHandleBlock an arena took
                // last, and live + free <= roots + merges = nodes: the storage of
                // nodes + arenas * kHandleBlock headers never overflows.
                if (a.next == a.end) {
                    a.next = n_lists_.fetch_add(kHandleBlock, std::memory_order_relaxed);
                    a.end = a.next + kHandleBlock;
                }
                h = a.next++;
            }
            new (&lists_[h]) List{};
            uf.set_payload(root, h);
        }
        return h;
    }

    MallocPtr storage_;
    List* lists_;
    std::atomic<uint32_t> n_lists_{0};
    struct alignas(64) Arena {  // a thread's free headers and its block of new ones
        std::vector<uint32_t> free;
        uint32_t next = 0, end = 0;
    };
    std::vector<Arena> arenas_;
    ChunkPools chunks_;
};

}  // namespace spoco
