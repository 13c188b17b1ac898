// The mutex watershed loop on several threads, with the partition of the sequential
// loop (mutex_watershed.hpp), bit for bit.
//
// Stripes. The grid is cut into T slabs ("stripes") along its longest axis, thread t
// owns stripe t. A cluster whose nodes all lie in stripe t is owned by thread t; a
// cluster with nodes in several stripes "spans" (`spans[root]`, a bit per stripe, is
// kept exact by the merges). An edge with both ends in stripe t is thread t's; an
// edge whose ends lie in two stripes is a cross edge.
//
// Batches. The sorted edges are cut into batches (by thread 1, which also collects
// each thread's edges of the next batch while the others work). In a batch, each
// thread walks its own edges in order and either executes an edge at once, skips it
// or defers it; then thread 0 executes all deferred edges of the batch, of every
// thread, in their global order (the batch's "ordered edges"), while the other
// threads go on with the next batches (see Overlap below). Thread t defers its edge e
// when e touches a spanning cluster, or when it is attractive and touches a cluster
// that an earlier deferred edge of the batch touched ("blocked") - unless a mutex
// already separates its two clusters: then it skips e -, or when it is repulsive and
// both its clusters are blocked. A deferred edge blocks its own clusters, and a cross
// edge blocks the clusters of its ends in each stripe.
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
// - Overlap. Threads 1.. may process batch b while the ordered edges of up to kOverlap
//   earlier batches are still pending (thread 0 runs them in batch order). The ordered
//   edges of a batch p touch only spanning clusters and clusters blocked in p, and this
//   stays true while they run (a merge keeps one of the two roots). Blocks are kept in
//   kOverlap + 1 slots by batch, so blocking in b leaves the blocks of pending batches
//   readable. A thread executes, skips (reading mutex lists) and blocks only clusters it
//   owns that are not blocked in a pending batch, and at its first edge at one that is,
//   it waits for that batch's ordered edges. Such clusters are touched by no pending
//   ordered edge, so the edges it executes early commute with those (which come first
//   in the global order) by the argument above, and their roots, where it writes its
//   blocks, are not linked meanwhile. A root found while thread 0 links it is one of a
//   cluster blocked in a pending batch or spanning: never executed on, never blocked.
// - Mutex lists: a thread writes only the lists of clusters it owns, or, for thread 0
//   in the ordered edges, of the clusters those touch (new lists and chunks from the
//   thread's own arena, mutex_lists.hpp), and reads others' trees only through find(),
//   which tolerates concurrent links (union_find.hpp). Counters of processed, ordered
//   and collected batches are released by their writer and acquired by the waiters.
// What stays ordered: the deferred edges (cross edges, edges at spanning clusters and
// the attractive edges behind them), 4 % (2D) to 10 % (3D) of the edges that change
// something in the benchmarks' inputs; and thread 1 reads every edge of a batch to
// cut it and to hand each thread its own.
//
// Balance. Edges of equal priority run in edge-id order, so runs of ties (saturated
// weights) sweep the grid stripe after stripe. A batch therefore ends once every
// stripe has kMinPerStripe edges in it and their counts differ by at most 1/8 of the
// batch, or at kMaxBatch edges: larger batches defer more (a blocked cluster stays
// blocked to the end of its batch), smaller ones wait more often for the slowest thread.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <memory>
#include <thread>
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

// Look-ahead of the loops, in edges: union-find words of the nodes at twice the
// distance, their parents at the distance, the roots' mutex lists at kSetPrefetchDistance.
constexpr std::size_t kPrefetchDistance = 32;
constexpr std::size_t kSetPrefetchDistance = 8;

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

/// Wait for another thread: spin briefly, then yield the core (on an oversubscribed
/// machine the thread waited for may need it).
template <class Ready>
void spin_until(Ready ready) {
    for (int i = 0; !ready(); ++i) {
        if (i < 4096) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            std::this_thread::yield();
        }
    }
}

/// The calling thread's CPU time against the wall time since construction (POSIX
/// thread CPU clocks; where there are none it never reports starvation).
class CpuClock {
public:
    CpuClock() : wall0_(std::chrono::steady_clock::now()), cpu0_(cpu_seconds()) {}
    /// Whether, after at least `min_seconds` of wall time, the thread has run on a core
    /// for less than `share` of it.
    bool starved(double share, double min_seconds) const {
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0_).count();
        if (wall < min_seconds || cpu0_ < 0) return false;
        return cpu_seconds() - cpu0_ < share * wall;
    }

private:
    static double cpu_seconds() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
        timespec ts;
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return static_cast<double>(ts.tv_sec) + 1e-9 * ts.tv_nsec;
#endif
        return -1.0;
    }
    std::chrono::steady_clock::time_point wall0_;
    double cpu0_;
};

/// Which stripe each node lies in: the grid cut into `n` slabs along one axis.
struct Stripes {
    std::vector<uint8_t> of_node;  // stripe of each node
    int n = 1;
};

constexpr std::size_t kMinPerStripe = 4096;  // edges; less on small inputs (min_per_stripe)
constexpr std::size_t kMinParallelNodes = 4096;
constexpr std::size_t kMaxBatch = std::size_t(1) << 16;
// The stripe loop's look-ahead, in items (union-find words of the nodes at twice the
// distance, their parents at it); the sequential loop's kPrefetchDistance was not
// tried here.
constexpr std::size_t kParallelPrefetch = 16;
/// How many batches' ordered edges may still be pending when a thread starts a batch:
/// more slack for batches of uneven work, but more memory (2 bytes per node each) and
/// more clusters to wait at (2D benchmark: waits of both threads 130, 90, 70 ms for 1,
/// 2, 3).
constexpr uint32_t kOverlap = 2;

/// Hand-over. The stripes are a fixed split, so the team runs at the pace of its
/// slowest thread: while another process kept one of two cores busy, two threads took
/// 1.5-1.7x (2D benchmark) and 1.2x (3D) the time of one. So each thread compares, at
/// the end of every batch from the kHandoverMinBatches-th on, the CPU time it got in
/// the loop with the wall time: below kHandoverCpuShare, the team stops at the next
/// batch boundary, and the calling thread runs the remaining edges with the sequential
/// loop. Exact: after the ordered edges of a batch, the state is the sequential loop's
/// after that batch's last edge. Spinning counts as CPU time, so waiting for a busy
/// stripe does not hand over; only threads kept off their cores by other work do.
constexpr uint32_t kHandoverMinBatches = 8;
constexpr double kHandoverCpuShare = 0.75;  // measured: 0.86-1.00 alone, 0.58-0.70 beside a busy process
constexpr double kHandoverMinSeconds = 0.02;  // shorter: the scheduler's time slices dominate

/// For tests: > 0 makes every loop on stripes hand over after that batch; 0 (default)
/// leaves it to the CPU time the threads get.
inline std::atomic<uint32_t> handover_after_batch{0};
/// Hand-overs in this process so far (for benchmarks and tests).
inline std::atomic<uint64_t> handover_count{0};

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
/// edges. `ids` carry their class; items_of(t) is thread t's list. Returns the end.
template <class Id, class Decode, class ItemsOf>
std::size_t collect_batch(const Id* ids, std::size_t begin, std::size_t n, Decode& decode, const Stripes& st,
                          std::size_t min_per_stripe, ItemsOf items_of) {
    std::size_t count[kCrossTag + 1] = {};  // own edges per stripe, cross edges
    for (int t = 0; t < st.n; ++t) items_of(static_cast<std::size_t>(t)).clear();
    const std::size_t limit = std::min(n, begin + kMaxBatch);
    std::size_t k = begin;
    while (k < limit) {
        const std::size_t chunk_end = std::min(limit, k + 256);
        for (; k < chunk_end; ++k) {
            const uint32_t cls = static_cast<uint32_t>(ids[k] >> kTagShift);
            const Edge e = decode(ids[k] & kIdMask);
            ++count[cls];
            if (cls != kCrossTag) {
                items_of(cls).emplace_back(k - begin, e, false);
            } else {
                items_of(st.of_node[e.u]).emplace_back(k - begin, e, true);
                items_of(st.of_node[e.v]).emplace_back(k - begin, e, true);
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
/// class of each edge into its id (ids[k] & kIdMask is the id). Returns how many edges
/// it ran, [0, ret): n, or fewer when the team handed over (kHandoverMinBatches) - the
/// sequential loop must run the rest -, or 0, having changed nothing, when it did not
/// get st.n threads.
template <class Id, class Decode>
std::size_t mutex_watershed_loop_parallel(Id* ids, std::size_t n, UnionFind& uf, MutexLists& mutexes, Decode decode,
                                   const Stripes& st) {
    static_assert(sizeof(Id) == 4, "the loop on stripes keeps edge classes in 32-bit ids");
    const int T = st.n;
    const std::size_t min_per_stripe = std::clamp<std::size_t>(n / 256, 16, kMinPerStripe);
    const std::size_t N = uf.size();
    // Per root: the stripes its cluster spans (a bit each) and, in kOverlap + 1 slots
    // (batch b in slot b % kSlots), the last batch that blocked it, modulo 2^16 (a
    // block seen where there is none only defers an edge or waits: never wrong). Other
    // threads read them while one writes them: relaxed atomics.
    std::unique_ptr<std::atomic<uint8_t>[]> spans(new std::atomic<uint8_t>[N]);
    for (std::size_t i = 0; i < N; ++i) spans[i].store(static_cast<uint8_t>(1u << st.of_node[i]), std::memory_order_relaxed);
    constexpr uint32_t kSlots = kOverlap + 1;
    std::unique_ptr<std::atomic<uint16_t>[]> blocked_slots[kSlots];
    for (auto& slot : blocked_slots) {
        slot.reset(new std::atomic<uint16_t>[N]);
        for (std::size_t i = 0; i < N; ++i) slot[i].store(0, std::memory_order_relaxed);
    }
    auto span_of = [&](uint32_t r) SPOCO_ALWAYS_INLINE { return spans[r].load(std::memory_order_relaxed); };
    auto blocked_in = [&](uint32_t r, uint32_t batch) SPOCO_ALWAYS_INLINE {
        return blocked_slots[batch % kSlots][r].load(std::memory_order_relaxed) == static_cast<uint16_t>(batch);
    };
    auto block = [&](uint32_t r, uint32_t batch) SPOCO_ALWAYS_INLINE {
        blocked_slots[batch % kSlots][r].store(static_cast<uint16_t>(batch), std::memory_order_relaxed);
    };
    // Per thread: its deferred edges of the batches whose ordered edges may be pending
    // (batch b at b % kSlots), its items of those and of the next batch.
    constexpr uint32_t kItemLists = kOverlap + 2;
    struct alignas(64) PerThread {  // a cache line each: no false sharing on push_back
        std::vector<std::size_t> deferred[kSlots];
        std::vector<Item> items[kItemLists];
        std::atomic<uint32_t> processed{0};  // last batch whose edges it has processed
    };
    std::vector<PerThread> per_thread(static_cast<std::size_t>(T));
    std::vector<std::size_t> merged;
    std::size_t batch_begin[kItemLists] = {}, batch_end[kItemLists] = {};
    alignas(64) std::atomic<uint32_t> collected{0};  // last batch whose items are ready
    alignas(64) std::atomic<uint32_t> ordered{0};    // last batch whose deferred edges ran
    // Hand-over: any thread may ask (stop_asked); thread 1 then collects no more batches
    // and publishes the last one it collected (last_batch), after which every thread stops.
    alignas(64) std::atomic<bool> stop_asked{false};
    std::atomic<uint32_t> last_batch{~0u};
    const uint32_t forced_handover = handover_after_batch.load(std::memory_order_relaxed);

    // Cut and collect batch b (thread 1, or before the loop).
    auto collect = [&](uint32_t b, std::size_t begin) {
        auto items_of = [&](std::size_t thread) -> std::vector<Item>& { return per_thread[thread].items[b % kItemLists]; };
        batch_begin[b % kItemLists] = begin;
        batch_end[b % kItemLists] = collect_batch(ids, begin, n, decode, st, min_per_stripe, items_of);
        collected.store(b, std::memory_order_release);
    };

    // The sequential step, keeping `spans` exact; `arena` is the calling thread's.
    auto execute = [&](const Edge& e, uint32_t ru, uint32_t rv, int arena) {
        const uint8_t both = static_cast<uint8_t>(span_of(ru) | span_of(rv));
        const uint32_t root = execute_edge(uf, mutexes, e, ru, rv, arena);
        if (root != kNotMerged) spans[root].store(both, std::memory_order_relaxed);
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
            PerThread& me = per_thread[static_cast<std::size_t>(t)];
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
            collect(1, 0);
            const CpuClock clock;  // from here on, a thread off its core is kept off by others
            // Thread 0 processes batch b after the ordered edges of b - 1. The other
            // threads may start it while those of up to kOverlap earlier batches are
            // pending ("overlapped"): until they see them done, they execute and block
            // only clusters that those edges do not touch, and at the first edge at
            // one that they may touch (one of their clusters blocked in a pending
            // batch) they wait for that batch's ordered edges.
            for (uint32_t batch = 1;; ++batch) {
                const uint32_t previous = batch - 1;
                spin_until([&] { return (collected.load(std::memory_order_acquire) >= batch &&
                                         ordered.load(std::memory_order_acquire) + kOverlap >= previous) ||
                                        last_batch.load(std::memory_order_acquire) < batch; });
                if (last_batch.load(std::memory_order_acquire) < batch) break;  // handed over
                const std::size_t b0 = batch_begin[batch % kItemLists], b1 = batch_end[batch % kItemLists];
                const std::vector<Item>& items = me.items[batch % kItemLists];
                std::vector<std::size_t>& my_deferred = me.deferred[batch % kSlots];
                my_deferred.clear();  // its edges ran kSlots batches ago
                uint32_t done = ordered.load(std::memory_order_acquire);  // as last seen
                // Whether root r may be touched by pending ordered edges: then wait for
                // them, and return true (the caller finds its roots again).
                auto waited_for = [&](uint32_t r) SPOCO_ALWAYS_INLINE {
                    if (done >= previous || span_of(r) != own) return false;
                    for (uint32_t p = done + 1; p <= previous; ++p) {
                        if (!blocked_in(r, p)) continue;
                        spin_until([&] { return ordered.load(std::memory_order_acquire) >= p; });
                        done = ordered.load(std::memory_order_acquire);
                        return true;
                    }
                    return false;
                };
                for (std::size_t i = 0; i < items.size(); ++i) {
                    if (done < previous && i % 64 == 0) done = ordered.load(std::memory_order_acquire);
                    // Look-ahead as in the sequential loop: nodes' words far ahead, their
                    // parents nearer, and soon the roots' lists, spans and blocks.
                    if (i + 2 * kParallelPrefetch < items.size()) {
                        uf.prefetch(items[i + 2 * kParallelPrefetch].u());
                        uf.prefetch(items[i + 2 * kParallelPrefetch].v());
                    }
                    if (i + kParallelPrefetch < items.size()) {
                        const uint32_t pu = uf.peek(items[i + kParallelPrefetch].u());
                        const uint32_t pv = uf.peek(items[i + kParallelPrefetch].v());
                        if (!(pu & UnionFind::kRootFlag)) uf.prefetch(pu);
                        if (!(pv & UnionFind::kRootFlag)) uf.prefetch(pv);
                    }
                    if (i + kSetPrefetchDistance < items.size()) {
                        for (const uint32_t node : {items[i + kSetPrefetchDistance].u(), items[i + kSetPrefetchDistance].v()}) {
                            const uint32_t r = uf.find(node);
                            mutexes.prefetch(uf.payload(r));
                            SPOCO_PREFETCH(&spans[r]);
                            SPOCO_PREFETCH(&blocked_slots[batch % kSlots][r]);
                        }
                    }
                    const std::size_t k = b0 + items[i].offset();
                    const Edge e = items[i].edge();
                    if (items[i].cross()) {
                        const uint8_t su = st.of_node[e.u], sv = st.of_node[e.v];
                        const uint32_t mine = su == t ? e.u : e.v;
                        uint32_t r = uf.find(mine);
                        while (waited_for(r)) r = uf.find(mine);
                        if (span_of(r) == own) block(r, batch);
                        if (t == std::min(su, sv)) my_deferred.push_back(k);
                        continue;
                    }
                    uint32_t ru = uf.find(e.u), rv = uf.find(e.v);
                    if (ru == rv) continue;
                    while (waited_for(ru) || waited_for(rv)) {
                        ru = uf.find(e.u);
                        rv = uf.find(e.v);
                    }
                    if (ru == rv) continue;
                    const bool owned = span_of(ru) == own && span_of(rv) == own;
                    const bool bu = blocked_in(ru, batch), bv = blocked_in(rv, batch);
                    // Attractive: neither cluster blocked; repulsive: not both (see above).
                    if (owned && (e.attractive ? !(bu || bv) : !(bu && bv))) {
                        execute(e, ru, rv, t);
                        continue;
                    }
                    // An attractive edge between two of this thread's clusters that a
                    // mutex separates now is a no-op whenever it runs: skip, not defer.
                    if (e.attractive && owned && mutexes.has_mutex(uf, ru, rv)) continue;
                    my_deferred.push_back(k);
                    if (span_of(ru) == own) block(ru, batch);
                    if (span_of(rv) == own) block(rv, batch);
                }
                me.processed.store(batch, std::memory_order_release);
                if (forced_handover ? batch >= forced_handover
                                    : batch >= kHandoverMinBatches && clock.starved(kHandoverCpuShare, kHandoverMinSeconds))
                    stop_asked.store(true, std::memory_order_relaxed);
                // Thread 1 cuts and collects the next batch, into the lists of the batch
                // kItemLists earlier once every thread has processed that (after a
                // hand-over was asked: makes this batch the last); thread 0 runs this
                // batch's deferred edges in order once every thread has processed it.
                if (t == 1 && b1 < n) {
                    if (stop_asked.load(std::memory_order_relaxed)) {
                        last_batch.store(batch, std::memory_order_release);
                    } else {
                        for (const PerThread& p : per_thread)
                            spin_until([&] { return p.processed.load(std::memory_order_acquire) + kItemLists >= batch + 1; });
                        collect(batch + 1, b1);
                    }
                }
                if (t == 0) {
                    for (const PerThread& p : per_thread)
                        spin_until([&] { return p.processed.load(std::memory_order_acquire) >= batch; });
                    merged.clear();
                    for (const PerThread& p : per_thread)
                        merged.insert(merged.end(), p.deferred[batch % kSlots].begin(), p.deferred[batch % kSlots].end());
                    std::sort(merged.begin(), merged.end());
                    for (std::size_t k : merged) {
                        const Edge e = decode(ids[k] & kIdMask);
                        const uint32_t ru = uf.find(e.u), rv = uf.find(e.v);
                        if (ru != rv) execute(e, ru, rv, 0);
                    }
                    ordered.store(batch, std::memory_order_release);
                }
                if (b1 >= n) break;
            }
        }
    }
    if (!full_team) return 0;
    const uint32_t last = last_batch.load(std::memory_order_relaxed);
    if (last == ~0u) return n;
    handover_count.fetch_add(1, std::memory_order_relaxed);
    return batch_end[last % kItemLists];
}

}  // namespace detail
}  // namespace spoco
