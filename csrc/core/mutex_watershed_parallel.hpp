// The mutex watershed loop on several threads, with the partition of the sequential
// loop (mutex_watershed.hpp), bit for bit.
//
// Stripes. The grid is cut into T slabs ("stripes") along its longest axis, thread t
// owns stripe t. A cluster whose nodes all lie in stripe t is owned by thread t; a
// cluster with nodes in several stripes "spans" (`spans[root]`, a bit per stripe, is
// kept exact by the merges). An edge with both ends in stripe t is thread t's; an
// edge whose ends lie in two stripes is a cross edge.
//
// Batches. The sorted edges are cut into batches (all threads cut them alike: the
// cut depends on the edges only). In a batch, each thread walks its own edges in
// order and either executes an edge at once, skips it or defers it; then one thread
// executes all deferred edges of the batch, of every thread, in their global order;
// then the next batch. Thread t defers its edge e when e touches a spanning cluster,
// or when it is attractive and touches a cluster that an earlier deferred edge of the
// batch touched ("blocked") - unless a mutex already separates its two clusters: then
// it skips e -, or when it is repulsive and both its clusters are blocked. A deferred
// edge blocks its own clusters, and a cross edge blocks the clusters of its ends in
// each stripe.
//
// Why the partition is the sequential one. Executing the batch this way is executing
// its edges in another order, so it is enough that every edge executed early commutes
// with every edge it overtakes, that skipped edges are no-ops, and that the deferred
// edges keep their order (they do).
// - Clusters only ever grow and mutexes are never removed, so "u and v are in one
//   cluster" and "a mutex separates the clusters of u and v" stay true: an edge whose
//   ends are in one cluster, and an attractive edge between separated clusters, are
//   no-ops whenever they run. (What a thread sees when it meets e was written by
//   edges before e, or by edges that commute with e, below; so it held at e's turn.)
// - An edge executed at once by thread t touches only clusters owned by t; clusters
//   owned by another thread, spanning clusters and blocked clusters are never merged
//   by it. An edge's outcome reads its two clusters and the mutexes between them,
//   which only edges touching one of those clusters write, and ownership does not
//   change inside a batch (clusters of one owner merge only with each other). So
//   edges of different threads touch disjoint clusters and commute.
// - Overtaking a deferred edge d: d's clusters were blocked when d was met and stay
//   unmerged until the deferred edges run, so an attractive edge executed early
//   touched neither of them and commutes with d. A repulsive edge (x, y) executed
//   early with y's cluster Y blocked and x's cluster X not: it only records a mutex
//   X-Y, which could change d only if d asked whether a cluster containing X may
//   merge with Y; no earlier deferred edge touched X (else X would be blocked), so d
//   does not, and d's merges of Y with other clusters leave X out, so the mutex is
//   also the one the sequential loop records (between X and Y's later cluster).
// - Mutex lists: a thread writes only the lists of clusters it owns (new lists and
//   chunks from its own arena, mutex_lists.hpp), and reads others' trees only
//   through find(), which tolerates concurrent links (union_find.hpp).
// What stays ordered: the deferred edges (cross edges, edges at spanning clusters and
// the attractive edges behind them), 4 % (2D) to 10 % (3D) of the edges that change
// something in the benchmarks' inputs; and every thread reads every edge of a batch to
// cut batches alike and to find its own.
//
// Balance. Edges of equal priority run in edge-id order, so runs of ties (saturated
// weights) sweep the grid stripe after stripe. A batch therefore ends once every
// stripe has kMinPerStripe edges in it and their counts differ by at most 1/8 of the
// batch, or at kMaxBatch edges: larger batches defer more (a blocked cluster stays
// blocked to the end of its batch), smaller ones wait more often for the slowest thread.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "core/common.hpp"
#include "core/mutex_lists.hpp"
#include "core/union_find.hpp"

namespace spoco {
namespace detail {

/// An edge as the loops see it (decoded from its id).
struct Edge {
    uint32_t u, v;
    bool attractive;
};

constexpr uint32_t kNotMerged = 0xFFFFFFFFu;

/// One step of the mutex watershed on an edge whose ends have the distinct roots ru and
/// rv: merge (attractive, unless a mutex separates them) or record a mutex (repulsive).
/// `arena`: the calling thread's. Returns the root of the merged cluster, or kNotMerged.
inline uint32_t execute_edge(UnionFind& uf, MutexLists& mutexes, const Edge& e, uint32_t ru, uint32_t rv,
                             int arena = 0) {
    if (!e.attractive) {
        mutexes.add_mutex(uf, ru, rv, e.u, e.v, arena);
        return kNotMerged;
    }
    if (mutexes.has_mutex(uf, ru, rv)) return kNotMerged;
    const uint32_t hu = uf.payload(ru), hv = uf.payload(rv);
    const uint32_t root = uf.link(ru, rv);
    uf.set_payload(root, mutexes.merge(hu, hv, arena));
    return root;
}

/// Which stripe each node lies in: the grid cut into `n` slabs along one axis.
struct Stripes {
    std::vector<uint8_t> of_node;  // stripe of each node
    int n = 1;
};

constexpr std::size_t kMinPerStripe = 4096;  // edges; less on small inputs (min_per_stripe)
constexpr std::size_t kMinParallelNodes = 4096;
constexpr std::size_t kMaxBatch = std::size_t(1) << 16;
constexpr std::size_t kParallelPrefetch = 16;

/// An edge's class: the stripe of both its ends, or kCrossTag. The loop keeps it in
/// the top 4 bits of the 32-bit edge ids (it runs only when ids leave them free), so
/// that cutting batches and collecting items reads no stripe of any node.
constexpr int kTagShift = 28;
constexpr uint32_t kCrossTag = 15;
constexpr uint32_t kIdMask = (1u << kTagShift) - 1;

/// Stripes of a grid for `threads` threads along its longest axis (z, y, x; the first
/// on ties), each at least twice as wide as the longest offset along that axis (and 8
/// pixels), so that most edges stay inside a stripe. n = 1 (the sequential loop) for
/// grids of fewer than kMinParallelNodes pixels, and for grids of more than kIdMask
/// edge ids `n_ids`, whose 32-bit ids leave no room for the edges' classes.
inline Stripes grid_stripes(const std::array<int64_t, 3>& shape, const std::vector<std::array<int64_t, 3>>& offsets,
                            uint64_t n_ids, int threads) {
    Stripes st;
    int axis = 0;
    for (int a = 1; a < 3; ++a)
        if (shape[a] > shape[axis]) axis = a;
    const int64_t extent = shape[axis];
    int64_t reach = 4;
    for (const auto& o : offsets) reach = std::max<int64_t>(reach, o[axis] < 0 ? -o[axis] : o[axis]);
    const std::size_t N = static_cast<std::size_t>(shape[0] * shape[1] * shape[2]);
    const int64_t n = std::min<int64_t>({threads, MutexLists::kMaxArenas, extent / (2 * reach)});
    if (n < 2 || N < kMinParallelNodes || n_ids > kIdMask) return st;
    st.n = static_cast<int>(n);
    st.of_node.resize(N);
    const std::ptrdiff_t planes = static_cast<std::ptrdiff_t>(shape[0]);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::ptrdiff_t z = 0; z < planes; ++z) {
        uint8_t* out = st.of_node.data() + static_cast<std::size_t>(z * shape[1] * shape[2]);
        for (int64_t y = 0; y < shape[1]; ++y)
            for (int64_t x = 0; x < shape[2]; ++x) {
                const int64_t c = axis == 0 ? z : axis == 1 ? y : x;
                *out++ = static_cast<uint8_t>(c * n / extent);
            }
    }
    return st;
}

/// An edge of a batch that a thread handles, in 12 bytes: its offset in the batch,
/// its ends, and (in the ends' top bits, free below 2^31 nodes) whether it is
/// attractive and whether it is a cross edge.
class Item {
public:
    Item(std::size_t offset, const Edge& e, bool cross)
        : offset_(static_cast<uint32_t>(offset)), u_(e.u | (e.attractive ? kFlag : 0u)), v_(e.v | (cross ? kFlag : 0u)) {}
    std::size_t offset() const { return offset_; }
    uint32_t u() const { return u_ & ~kFlag; }
    uint32_t v() const { return v_ & ~kFlag; }
    Edge edge() const { return Edge{u(), v(), (u_ & kFlag) != 0}; }
    bool cross() const { return (v_ & kFlag) != 0; }

private:
    static constexpr uint32_t kFlag = 0x80000000u;
    uint32_t offset_, u_, v_;
};

/// Cut the batch starting at `begin` and collect every thread's items of it (its own
/// edges and the cross edges at its stripe, in order) into items[t]. The batch ends at
/// the first position, checked every 256 edges, at which every stripe has
/// `min_per_stripe` own edges (kMinPerStripe, or n / 256 on inputs too small for it)
/// and their counts differ by at most 1/8 of their sum; it has at most kMaxBatch
/// edges. `ids` carry their class. Returns the end.
template <class Id, class Decode, class ItemLists>
std::size_t collect_batch(const Id* ids, std::size_t begin, std::size_t n, Decode& decode, const Stripes& st,
                          std::size_t min_per_stripe, ItemLists& items) {
    std::size_t count[kCrossTag + 1] = {};  // own edges per stripe, cross edges
    for (auto& list : items) list.items.clear();
    const std::size_t limit = std::min(n, begin + kMaxBatch);
    std::size_t k = begin;
    while (k < limit) {
        const std::size_t chunk_end = std::min(limit, k + 256);
        for (; k < chunk_end; ++k) {
            const uint32_t cls = static_cast<uint32_t>(ids[k] >> kTagShift);
            const Edge e = decode(ids[k] & kIdMask);
            ++count[cls];
            if (cls != kCrossTag) {
                items[cls].items.emplace_back(k - begin, e, false);
            } else {
                items[st.of_node[e.u]].items.emplace_back(k - begin, e, true);
                items[st.of_node[e.v]].items.emplace_back(k - begin, e, true);
            }
        }
        const auto [lo, hi] = std::minmax_element(count, count + st.n);
        std::size_t sum = 0;
        for (int c = 0; c < st.n; ++c) sum += count[c];
        if (*lo >= min_per_stripe && 8 * (*hi - *lo) <= sum) break;
    }
    return k;
}

/// The loop of mutex_watershed.hpp on `st.n` threads (st.n <= MutexLists arenas), for
/// 32-bit ids below 2^kTagShift (grid_stripes makes stripes only then); writes the
/// class of each edge into its id. Returns false, having changed nothing, when it did not get st.n threads.
template <class Id, class Decode>
bool mutex_watershed_loop_parallel(Id* ids, std::size_t n, UnionFind& uf, MutexLists& mutexes, Decode decode,
                                   const Stripes& st) {
    static_assert(sizeof(Id) == 4, "the loop on stripes keeps edge classes in 32-bit ids");
    const int T = st.n;
    const std::size_t min_per_stripe = std::clamp<std::size_t>(n / 256, 16, kMinPerStripe);
    const std::size_t N = uf.size();
    std::vector<uint8_t> spans(N);
    for (std::size_t i = 0; i < N; ++i) spans[i] = static_cast<uint8_t>(1u << st.of_node[i]);
    std::vector<uint32_t> blocked(N, 0);  // batch number (from 1) in which a root was blocked
    struct alignas(64) Deferred {  // a cache line each: no false sharing on push_back
        std::vector<std::size_t> ks;
    };
    std::vector<Deferred> deferred(static_cast<std::size_t>(T));
    std::vector<std::size_t> merged;
    struct alignas(64) ItemList {  // one thread's items of a batch
        std::vector<Item> items;
    };
    std::vector<ItemList> current(static_cast<std::size_t>(T)), next(static_cast<std::size_t>(T));
    std::size_t next_end = 0;

    // The sequential step, keeping `spans` exact; `arena` is the calling thread's.
    auto execute = [&](const Edge& e, uint32_t ru, uint32_t rv, int arena) {
        const uint8_t both = static_cast<uint8_t>(spans[ru] | spans[rv]);
        const uint32_t root = execute_edge(uf, mutexes, e, ru, rv, arena);
        if (root != kNotMerged) spans[root] = both;
    };

    bool full_team = false;
#pragma omp parallel num_threads(T)
    {
#ifdef SPOCO_HAVE_OPENMP
        const int t = omp_get_thread_num();
        // Fewer threads than stripes (nested in another parallel region, a thread
        // limit): leave everything to the sequential loop.
        if (omp_get_num_threads() == T) {
#pragma omp single
            full_team = true;
        }
#else
        const int t = 0;
#endif
        if (full_team) {
            const uint8_t own = static_cast<uint8_t>(1u << t);
            std::vector<std::size_t>& my_deferred = deferred[static_cast<std::size_t>(t)].ks;
            {
                const std::size_t k0 = n * static_cast<std::size_t>(t) / static_cast<std::size_t>(T);
                const std::size_t k1 = n * static_cast<std::size_t>(t + 1) / static_cast<std::size_t>(T);
                for (std::size_t k = k0; k < k1; ++k) {
                    const Edge e = decode(ids[k]);
                    const uint8_t su = st.of_node[e.u], sv = st.of_node[e.v];
                    ids[k] |= static_cast<Id>(su == sv ? su : kCrossTag) << kTagShift;
                }
            }
#pragma omp barrier
#pragma omp single
            next_end = collect_batch(ids, 0, n, decode, st, min_per_stripe, next);
            uint32_t batch = 0;
            for (std::size_t b0 = 0; b0 < n;) {
                ++batch;
                const std::size_t b1 = next_end;
                std::vector<Item>& items = current[static_cast<std::size_t>(t)].items;
                items.swap(next[static_cast<std::size_t>(t)].items);
                // Everyone has read next_end and taken its items before they are refilled.
#pragma omp barrier
                for (std::size_t i = 0; i < items.size(); ++i) {
                    if (i + kParallelPrefetch < items.size()) {
                        uf.prefetch(items[i + kParallelPrefetch].u());
                        uf.prefetch(items[i + kParallelPrefetch].v());
                    }
                    const std::size_t k = b0 + items[i].offset();
                    const Edge e = items[i].edge();
                    if (items[i].cross()) {
                        const uint8_t su = st.of_node[e.u], sv = st.of_node[e.v];
                        const uint32_t r = uf.find(su == t ? e.u : e.v);
                        if (spans[r] == own) blocked[r] = batch;
                        if (t == std::min(su, sv)) my_deferred.push_back(k);
                        continue;
                    }
                    const uint32_t ru = uf.find(e.u), rv = uf.find(e.v);
                    if (ru == rv) continue;
                    const bool owned = spans[ru] == own && spans[rv] == own;
                    const bool bu = blocked[ru] == batch, bv = blocked[rv] == batch;
                    // Attractive: neither cluster blocked; repulsive: not both (see above).
                    if (owned && (e.attractive ? !(bu || bv) : !(bu && bv))) {
                        execute(e, ru, rv, t);
                        continue;
                    }
                    // An attractive edge between two of this thread's clusters that a
                    // mutex separates now is a no-op whenever it runs: skip, not defer.
                    if (e.attractive && owned && mutexes.has_mutex(uf, ru, rv)) continue;
                    my_deferred.push_back(k);
                    if (spans[ru] == own) blocked[ru] = batch;
                    if (spans[rv] == own) blocked[rv] = batch;
                }
#pragma omp barrier
                // Thread 0 runs the deferred edges in order while thread 1 cuts and
                // collects the next batch (which reads edge ids only).
                if (t == 0) {
                    merged.clear();
                    for (const auto& d : deferred) merged.insert(merged.end(), d.ks.begin(), d.ks.end());
                    std::sort(merged.begin(), merged.end());
                    for (std::size_t k : merged) {
                        const Edge e = decode(ids[k] & kIdMask);
                        const uint32_t ru = uf.find(e.u), rv = uf.find(e.v);
                        if (ru != rv) execute(e, ru, rv, 0);
                    }
                    for (auto& d : deferred) d.ks.clear();
                } else if (t == 1 && b1 < n) {
                    next_end = collect_batch(ids, b1, n, decode, st, min_per_stripe, next);
                }
#pragma omp barrier
                b0 = b1;
            }
        }
    }
    return full_team;
}

}  // namespace detail
}  // namespace spoco
