// Stable sort of (key, edge id) records produced in edge-id order, in
// 8 bytes of memory per record plus the scratch of the largest bucket.
//
// Pass 1 counts the records per bucket of the key's top 16 bits; pass 2 asks the
// producer for the records again and scatters them into their buckets; then each
// bucket is sorted by its remaining key bits with a stable LSD radix sort (8-bit
// digits, digits that never vary in the bucket are skipped). Because records are
// produced in ascending edge id and every step is stable, equal keys keep
// ascending edge id: the mutex watershed's tie rule comes for free.
//
// The producer is called as produce(chunk, n_chunks, sink) and must emit the
// records of one contiguous chunk of the edge-id order. Chunk boundaries only
// move work between threads: the result is identical for every thread count.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <memory>
#include <vector>

#include "core/common.hpp"

namespace spoco {

/// Order-preserving map of a float to uint32: a < b  <=>  key(a) < key(b).
inline uint32_t ascending_key(float x) {
    x += 0.0f;  // -0 -> +0, so that both zeros tie
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline uint64_t ascending_key(double x) {
    x += 0.0;
    uint64_t u;
    std::memcpy(&u, &x, sizeof u);
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

/// Key that sorts by priority descending.
template <class T>
inline auto descending_key(T x) { return ~ascending_key(x); }

namespace detail {

constexpr int kBucketBits = 16;
constexpr std::size_t kBuckets = std::size_t(1) << kBucketBits;

/// Stable LSD radix sort of recs[0, n) by key bits [0, low_bits); `scratch` grows
/// only when a digit actually varies (saturated buckets need none).
template <class R>
void sort_bucket(typename R::type* recs, std::vector<typename R::type>& scratch, std::size_t n, int low_bits) {
    using Rec = typename R::type;
    if (n < 2) return;
    if (n <= 32) {  // insertion sort is stable and cheaper for tiny buckets
        for (std::size_t i = 1; i < n; ++i) {
            const Rec r = recs[i];
            const uint64_t k = R::key(r);
            std::size_t j = i;
            for (; j > 0 && R::key(recs[j - 1]) > k; --j) recs[j] = recs[j - 1];
            recs[j] = r;
        }
        return;
    }
    const int digits = (low_bits + 7) / 8;
    std::array<std::array<std::size_t, 256>, 8> hist{};
    for (std::size_t i = 0; i < n; ++i) {
        const uint64_t k = R::key(recs[i]);
        for (int d = 0; d < digits; ++d) ++hist[d][(k >> (8 * d)) & 0xFF];
    }
    Rec* src = recs;
    Rec* dst = nullptr;
    for (int d = 0; d < digits; ++d) {
        auto& h = hist[d];
        if (*std::max_element(h.begin(), h.end()) == n) continue;  // digit never varies
        if (!dst) {
            if (scratch.size() < n) scratch.resize(n);
            dst = scratch.data();
        }
        std::size_t run = 0;
        for (auto& c : h) { const std::size_t t = c; c = run; run += t; }
        const int shift = 8 * d;
        for (std::size_t i = 0; i < n; ++i) dst[h[(R::key(src[i]) >> shift) & 0xFF]++] = src[i];
        std::swap(src, dst);
    }
    if (src != recs) std::memcpy(recs, src, n * sizeof(Rec));
}

}  // namespace detail

/// Produce and sort records by key ascending (ties: production order).
/// `key_bits` is the key width (32 or 64). Returns malloc'ed storage holding the
/// n sorted records.
template <class R, class Produce>
MallocPtr produce_sorted(int key_bits, int threads, Produce produce, std::size_t& n) {
    using Rec = typename R::type;
    using detail::kBuckets;
    const int low_bits = key_bits - detail::kBucketBits;
    threads = std::max(1, threads);
    // Pass 1: per-chunk bucket counts.
    std::vector<std::vector<std::size_t>> count(threads, std::vector<std::size_t>(kBuckets, 0));
#pragma omp parallel for schedule(static, 1) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
        std::size_t* c = count[t].data();
        produce(t, threads, [c, low_bits](uint64_t key, uint64_t) { ++c[key >> low_bits]; });
    }
    // Offsets: bucket-major, then chunk (keeps the scatter stable).
    std::vector<std::size_t> bucket_start(kBuckets + 1, 0);
    std::size_t run = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) {
        bucket_start[b] = run;
        for (int t = 0; t < threads; ++t) {
            const std::size_t c = count[t][b];
            count[t][b] = run;
            run += c;
        }
    }
    bucket_start[kBuckets] = run;
    n = run;
    // Pass 2: scatter into buckets.
    MallocPtr recs = malloc_or_throw(n * sizeof(Rec));
    Rec* out = static_cast<Rec*>(recs.get());
#pragma omp parallel for schedule(static, 1) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
        std::size_t* pos = count[t].data();
        produce(t, threads, [pos, out, low_bits](uint64_t key, uint64_t id) { out[pos[key >> low_bits]++] = R::make(key, id); });
    }
    count.clear();
    count.shrink_to_fit();
    // Sort every bucket by the remaining bits.
#pragma omp parallel num_threads(threads)
    {
        std::vector<Rec> scratch;
#pragma omp for schedule(dynamic, 64)
        for (std::ptrdiff_t b = 0; b < static_cast<std::ptrdiff_t>(kBuckets); ++b) {
            const std::size_t lo = bucket_start[b], len = bucket_start[b + 1] - lo;
            if (len >= 2) detail::sort_bucket<R>(out + lo, scratch, len, low_bits);
        }
    }
    return recs;
}

}  // namespace spoco
