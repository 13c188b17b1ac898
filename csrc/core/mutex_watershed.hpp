// The mutex watershed (Wolf et al., ECCV 2018) on grids and on plain graphs.
//
// Every edge has a priority. Attractive edges ask to merge their ends, repulsive
// (mutex) edges forbid it. In order of priority, highest first, ties by edge id
// ascending:
//   - attractive edge (u, v): merge the clusters of u and v unless a mutex
//     separates them;
//   - repulsive edge (u, v): if u and v are in different clusters, add a mutex
//     between the two clusters.
// Repulsive edges after the last attractive edge cannot change the partition, so
// the loop stops there.
//
// Implementation: records (order-preserving priority key, edge id) are produced
// in edge-id order and bucket/radix-sorted stably (radix_sort.hpp), which gives
// the tie rule for free, does not depend on the thread count and needs 8 bytes
// per edge plus the largest bucket. The sequential loop uses a union-find over
// 32-bit node ids and MutexLists (mutex_lists.hpp), prefetching the union-find
// records of edges a few dozen positions ahead. On grids with threads > 1 the loop
// runs on stripes of the grid in parallel (mutex_watershed_parallel.hpp: why its
// partition is the sequential one), and hands the rest of the edges to the sequential
// loop when its threads do not get their cores; plain graphs have no stripes and run
// it alone.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "core/common.hpp"
#include "core/embedding_weights.hpp"
#include "core/grid_edges.hpp"
#include "core/mutex_lists.hpp"
#include "core/mutex_watershed_parallel.hpp"
#include "core/radix_sort.hpp"
#include "core/union_find.hpp"

namespace spoco {

namespace detail {

// 8-byte record: key in the high half, 32-bit edge id in the low half.
struct PackedRecord {
    using type = uint64_t;
    static type make(uint64_t key, uint64_t id) { return (key << 32) | id; }
    static uint64_t key(type r) { return r >> 32; }
    static uint64_t id(type r) { return r & 0xFFFFFFFFull; }
};

// 16-byte record for float64 priorities or more than 2^32 edge ids.
struct WideRecord {
    struct type { uint64_t key, id; };
    static type make(uint64_t key, uint64_t id) { return {key, id}; }
    static uint64_t key(const type& r) { return r.key; }
    static uint64_t id(const type& r) { return r.id; }
};

/// The sequential heart: process the sorted edge ids [0, n).
template <class Id, class Decode>
void mutex_watershed_loop(const Id* ids, std::size_t n, UnionFind& uf, MutexLists& mutexes, Decode decode) {
    for (std::size_t k = 0; k < n; ++k) {
        // Two-stage look-ahead: the nodes' words far ahead, their parents nearer.
        if (k + 2 * kPrefetchDistance < n) {
            const Edge far = decode(ids[k + 2 * kPrefetchDistance]);
            uf.prefetch(far.u);
            uf.prefetch(far.v);
        }
        if (k + kPrefetchDistance < n) {
            const Edge near = decode(ids[k + kPrefetchDistance]);
            const uint32_t pu = uf.peek(near.u), pv = uf.peek(near.v);
            if (!(pu & UnionFind::kRootFlag)) uf.prefetch(pu);
            if (!(pv & UnionFind::kRootFlag)) uf.prefetch(pv);
        }
        if (k + kSetPrefetchDistance < n) {
            // Roots a few edges ahead are cached by now: prefetch their mutex lists.
            const Edge soon = decode(ids[k + kSetPrefetchDistance]);
            mutexes.prefetch(uf.payload(uf.find(soon.u)));
            mutexes.prefetch(uf.payload(uf.find(soon.v)));
        }
        const Edge e = decode(ids[k]);
        const uint32_t ru = uf.find(e.u), rv = uf.find(e.v);
        if (ru == rv) continue;
        execute_edge(uf, mutexes, e, ru, rv);
    }
}

/// Keep only the ids of the n sorted records, as Id, shrinking the storage in
/// place: the loop never needs the keys again, and this halves its memory.
template <class Id, class R>
MallocPtr compact_ids(MallocPtr recs, std::size_t n) {
    using Rec = typename R::type;
    static_assert(sizeof(Id) <= sizeof(Rec), "ids must not be wider than records");
    char* base = static_cast<char*>(recs.get());
    for (std::size_t i = 0; i < n; ++i) {  // write offset <= read offset: safe in place
        Rec r;
        std::memcpy(&r, base + i * sizeof(Rec), sizeof(Rec));
        const Id id = static_cast<Id>(R::id(r));
        std::memcpy(base + i * sizeof(Id), &id, sizeof(Id));
    }
    if (void* shrunk = std::realloc(recs.get(), n ? n * sizeof(Id) : 1)) {
        recs.release();
        recs.reset(shrunk);
    }
    return recs;
}

/// Produce and sort the records, then run the loop up to the last attractive edge:
/// on stripes->n threads when `stripes` has several (grid_stripes makes them only
/// for 32-bit ids with room for the edges' classes).
/// `sorted()` is called once the producer is no longer needed (to free its inputs).
template <class R, class Produce, class Decode, class IsAttractiveId, class Sorted>
void sort_and_solve(int key_bits, uint64_t n_ids, Produce produce, UnionFind& uf, MutexLists& mutexes,
                    Decode decode, IsAttractiveId is_attractive, int threads, Sorted sorted,
                    const Stripes* stripes = nullptr) {
    std::size_t n = 0;
    MallocPtr recs = produce_sorted<R>(key_bits, threads, produce, n);
    sorted();
    auto run = [&](auto id_type) {
        using Id = decltype(id_type);
        const MallocPtr ids_storage = compact_ids<Id, R>(std::move(recs), n);
        Id* ids = static_cast<Id*>(ids_storage.get());
        std::size_t stop = n;
        while (stop > 0 && !is_attractive(ids[stop - 1])) --stop;
        std::size_t ran = 0;
        if constexpr (sizeof(Id) == 4) {
            if (stripes && stripes->n > 1) {
                ran = mutex_watershed_loop_parallel(ids, stop, uf, mutexes, decode, *stripes);
                // The edges it left (a hand-over) carry their stripe class in the top bits.
                // Cleared here rather than masked in the decoder: the loop with a masking
                // decoder was ~10 % slower (2D benchmark), this pass costs a few ms.
                if (ran > 0)
                    for (std::size_t k = ran; k < stop; ++k) ids[k] &= kIdMask;
            }
        }
        mutex_watershed_loop(ids + ran, stop - ran, uf, mutexes, decode);
    };
    if (n_ids <= 0xFFFFFFFFull)
        run(uint32_t{});
    else
        run(uint64_t{});
}

/// Label the foreground pixels 1..K in order of first appearance; masked pixels 0.
inline void write_labels(UnionFind& uf, const uint8_t* mask, int64_t* labels) {
    const std::size_t n = uf.size();
    std::vector<uint32_t> label_of_root(n, 0);
    uint32_t next = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (mask && !mask[i]) { labels[i] = 0; continue; }
        uint32_t& l = label_of_root[uf.find(static_cast<uint32_t>(i))];
        if (l == 0) l = ++next;
        labels[i] = l;
    }
}

template <class T, class R, class RowPriority, class Sorted>
void solve_grid(const GridSpec& g, RowPriority row_priority, int64_t* labels, int threads, Sorted sorted) {
    const GridEdges edges(g);
    const std::size_t N = g.n_pixels();
    const std::size_t n_rows = edges.n_rows();
    // Chunk t of n emits the edges of rows [n_rows * t / n, n_rows * (t + 1) / n).
    auto produce = [&](int t, int n, auto&& sink) {
        std::vector<T> prio(static_cast<std::size_t>(g.shape[2]));
        const std::size_t r1 = n_rows * (t + 1) / n;
        for (std::size_t r = n_rows * t / n; r < r1; ++r) {
            const GridEdges::Row w = edges.row(r);
            if (w.x0 >= w.x1) continue;
            row_priority(w, prio.data());
            const bool dense = edges.dense(w);
            for (int64_t x = w.x0; x < w.x1; ++x)
                if (dense || edges.keep(w, x)) sink(descending_key(prio[x - w.x0]), edges.edge_id(w, x));
        }
    };
    std::vector<int64_t> lin(g.n_channels());
    for (std::size_t c = 0; c < lin.size(); ++c) lin[c] = g.linear_offset(c);
    const uint64_t n_attractive_ids = static_cast<uint64_t>(g.n_attractive) * N;
    const FastDiv by_n(N);
    auto decode = [&](uint64_t id) SPOCO_ALWAYS_INLINE {
        const uint64_t c = by_n(id);
        const uint64_t u = id - c * N;
        return Edge{static_cast<uint32_t>(u), static_cast<uint32_t>(static_cast<int64_t>(u) + lin[c]),
                    id < n_attractive_ids};
    };
    auto is_attractive = [&](uint64_t id) { return id < n_attractive_ids; };
    const Stripes stripes = grid_stripes(g.shape, g.offsets, g.n_channels() * N, threads);
    UnionFind uf(N);
    MutexLists mutexes(N, stripes.n);
    sort_and_solve<R>(8 * static_cast<int>(sizeof(T)), g.n_channels() * N, produce, uf, mutexes, decode,
                      is_attractive, threads, sorted, &stripes);
    write_labels(uf, g.mask, labels);
}

template <class T, class RowPriority, class Sorted>
void dispatch_grid(const GridSpec& g, RowPriority row_priority, int64_t* labels, int threads, Sorted sorted) {
    const uint64_t n_ids = static_cast<uint64_t>(g.n_channels()) * g.n_pixels();
    if (sizeof(T) == 4 && n_ids <= 0xFFFFFFFFull)
        solve_grid<T, PackedRecord>(g, row_priority, labels, threads, sorted);
    else
        solve_grid<T, WideRecord>(g, row_priority, labels, threads, sorted);
}

inline void check_grid_size(const GridSpec& g) {
    if (g.n_pixels() > UnionFind::kMaxNodes) throw std::invalid_argument("grid has too many pixels for one mutex watershed (>= 2^31)");
}

/// Squared embedding distance along a row, then Eq. 12 priorities.
template <class T>
void embedding_row_priority(const T* emb, std::size_t D, std::size_t N, T two_delta_d,
                            const GridEdges::Row& w, T* prio) {
    const std::size_t len = static_cast<std::size_t>(w.x1 - w.x0);
    for (std::size_t i = 0; i < len; ++i) prio[i] = T(0);
    for (std::size_t d = 0; d < D; ++d) {
        const T* a = emb + d * N + w.base + w.x0;
        const T* b = a + w.lin;
        for (std::size_t i = 0; i < len; ++i) {
            const T diff = a[i] - b[i];
            prio[i] += diff * diff;
        }
    }
    for (std::size_t i = 0; i < len; ++i) prio[i] = edge_priority(prio[i], two_delta_d, w.attractive);
}

}  // namespace detail

/// Mutex watershed on grid affinities `aff` of shape (C, N), C = g.n_channels().
/// Attractive channels: high = merge; repulsive channels: high = split.
/// Writes labels 1..K (0 where masked) to `labels` (N).
template <class T>
void mutex_watershed_grid(const T* aff, const GridSpec& g, int64_t* labels, int threads) {
    detail::check_grid_size(g);
    const std::size_t N = g.n_pixels();
    auto row_priority = [&](const GridEdges::Row& w, T* prio) {
        const T* a = aff + w.channel * N + w.base + w.x0;
        for (int64_t i = 0; i < w.x1 - w.x0; ++i) prio[i] = a[i];
    };
    detail::dispatch_grid<T>(g, row_priority, labels, resolve_threads(threads), [] {});
}

/// Mutex watershed directly from embeddings `emb` of shape (D, N), Eq. 12 priorities.
///
/// The sort reads every priority twice (once to count, once to place), and with D
/// channels per edge computing them twice cost more than storing them: they are
/// computed once, in parallel, for the rows that have edges, into a (C, N) buffer
/// (sizeof(T) bytes per edge) that is freed before the loop over the sorted edges,
/// whose memory peak it does not raise.
template <class T>
void mutex_watershed_embeddings(const T* emb, std::size_t D, T delta_d, const GridSpec& g,
                                int64_t* labels, int threads) {
    detail::check_grid_size(g);
    threads = resolve_threads(threads);
    const std::size_t N = g.n_pixels();
    const T two_delta_d = T(2) * delta_d;
    const GridEdges edges(g);
    MallocPtr storage = malloc_or_throw(g.n_channels() * N * sizeof(T));
    T* prio = static_cast<T*>(storage.get());
    // Pixel row by pixel row, all channels of one row together: the row's D
    // embedding rows stay in cache for every offset.
    const std::size_t rows_per_channel = static_cast<std::size_t>(g.shape[0] * g.shape[1]);
    const std::ptrdiff_t n_pixel_rows = static_cast<std::ptrdiff_t>(rows_per_channel);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::ptrdiff_t zy = 0; zy < n_pixel_rows; ++zy) {
        for (std::size_t c = 0; c < g.n_channels(); ++c) {
            const GridEdges::Row w = edges.row(c * rows_per_channel + static_cast<std::size_t>(zy));
            if (w.x0 < w.x1) detail::embedding_row_priority(emb, D, N, two_delta_d, w, prio + w.channel * N + w.base + w.x0);
        }
    }
    auto row_priority = [&](const GridEdges::Row& w, T* out) {
        std::memcpy(out, prio + w.channel * N + w.base + w.x0, sizeof(T) * static_cast<std::size_t>(w.x1 - w.x0));
    };
    detail::dispatch_grid<T>(g, row_priority, labels, threads, [&] { storage.reset(); });
}

/// Eq. 12 priorities as grid affinities (C, N): 1 - w on attractive channels, w on
/// repulsive ones; 0 where the offset leaves the grid. Masks and strides are not
/// applied (they select edges, they do not change weights).
template <class T>
void embedding_affinities(const T* emb, std::size_t D, T delta_d, const GridSpec& g, T* out, int threads) {
    GridSpec all = g;
    all.mask = nullptr;
    all.strides = {1, 1, 1};
    const GridEdges edges(all);
    const std::size_t N = g.n_pixels();
    const T two_delta_d = T(2) * delta_d;
    const std::ptrdiff_t R_ = static_cast<std::ptrdiff_t>(edges.n_rows());
    threads = resolve_threads(threads);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::ptrdiff_t r = 0; r < R_; ++r) {
        const GridEdges::Row w = edges.row(r);
        T* o = out + w.channel * N + w.base;
        for (int64_t x = 0; x < g.shape[2]; ++x) o[x] = T(0);
        if (w.x0 >= w.x1) continue;
        detail::embedding_row_priority(emb, D, N, two_delta_d, w, o + w.x0);
    }
}

/// Mutex watershed on a plain graph. Attractive edges `uvs` (E x 2) with
/// priorities `weights`, mutex edges `mutex_uvs` (M x 2) with `mutex_weights`.
/// Edge ids: attractive 0..E-1, then mutex E..E+M-1 (the tie rule).
/// Writes labels 1..K to `labels` (n_nodes).
template <class T>
void mutex_watershed_graph(std::size_t n_nodes, const int64_t* uvs, const T* weights, std::size_t n_edges,
                           const int64_t* mutex_uvs, const T* mutex_weights, std::size_t n_mutex,
                           int64_t* labels, int threads) {
    if (n_nodes > UnionFind::kMaxNodes) throw std::invalid_argument("graph has too many nodes (>= 2^31)");
    using R = detail::WideRecord;
    const std::size_t n = n_edges + n_mutex;
    auto produce = [&](int t, int chunks, auto&& sink) {
        const std::size_t i1 = n * (t + 1) / chunks;
        for (std::size_t i = n * t / chunks; i < i1; ++i)
            sink(descending_key(i < n_edges ? weights[i] : mutex_weights[i - n_edges]), i);
    };
    auto decode = [&](uint64_t id) SPOCO_ALWAYS_INLINE {
        const int64_t* p = id < n_edges ? uvs + 2 * id : mutex_uvs + 2 * (id - n_edges);
        return detail::Edge{static_cast<uint32_t>(p[0]), static_cast<uint32_t>(p[1]), id < n_edges};
    };
    auto is_attractive = [&](uint64_t id) { return id < n_edges; };
    UnionFind uf(n_nodes);
    MutexLists mutexes(n_nodes);
    detail::sort_and_solve<R>(8 * static_cast<int>(sizeof(T)), n, produce, uf, mutexes, decode, is_attractive,
                              resolve_threads(threads), [] {});
    detail::write_labels(uf, nullptr, labels);
}

}  // namespace spoco
