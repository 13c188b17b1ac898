// Stable LSD radix sort of fixed-size records by an unsigned integer key.
//
// Stability is what makes the mutex watershed's tie rule free: records are
// produced in ascending edge id, so equal keys keep ascending edge id.
// Digits are 8 bits; digits that are equal in every record are skipped.
// With several threads each thread owns a contiguous chunk in every pass, so the
// result is identical for any thread count.
#pragma once
#include <algorithm>
#include <array>
#include <cstring>
#include <cstdint>
#include <vector>

#include "core/common.hpp"

namespace spoco {

/// Sorts `a[0..n)` by `key(record)` (its low `key_bytes` bytes) using `buf` as
/// scratch of the same size. Returns the array that holds the sorted records
/// (either `a` or `buf`).
template <class Rec, class KeyFn>
Rec* radix_sort(Rec* a, Rec* buf, std::size_t n, int key_bytes, KeyFn key, int threads) {
    using Hist = std::array<std::size_t, 256>;
    threads = std::max(1, std::min<int>(threads, static_cast<int>(n / 65536) + 1));
    // One read: the histogram of every digit, to skip digits that never vary.
    std::vector<std::array<Hist, 8>> part(threads);
#pragma omp parallel num_threads(threads)
    {
#ifdef SPOCO_HAVE_OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        auto& h = part[t];
        for (auto& d : h) d.fill(0);
        const std::size_t lo = n * t / threads, hi = n * (t + 1) / threads;
        for (std::size_t i = lo; i < hi; ++i) {
            const uint64_t k = key(a[i]);
            for (int d = 0; d < key_bytes; ++d) ++h[d][(k >> (8 * d)) & 0xFF];
        }
    }
    std::vector<Hist> thread_hist(threads);
    for (int d = 0; d < key_bytes; ++d) {
        Hist total{};
        for (int t = 0; t < threads; ++t)
            for (int b = 0; b < 256; ++b) total[b] += part[t][d][b];
        if (*std::max_element(total.begin(), total.end()) == n) continue;  // constant digit
        const int shift = 8 * d;
        if (threads == 1) {
            thread_hist[0] = total;
        } else {
            // Chunk histograms change from pass to pass: recount this digit.
#pragma omp parallel num_threads(threads)
            {
                const int t = omp_get_thread_num();
                Hist& h = thread_hist[t];
                h.fill(0);
                const std::size_t lo = n * t / threads, hi = n * (t + 1) / threads;
                for (std::size_t i = lo; i < hi; ++i) ++h[(key(a[i]) >> shift) & 0xFF];
            }
        }
        // Exclusive offsets: bucket-major, then thread (keeps the sort stable).
        std::size_t run = 0;
        for (int b = 0; b < 256; ++b)
            for (int t = 0; t < threads; ++t) {
                const std::size_t c = thread_hist[t][b];
                thread_hist[t][b] = run;
                run += c;
            }
#pragma omp parallel num_threads(threads)
        {
#ifdef SPOCO_HAVE_OPENMP
            const int t = omp_get_thread_num();
#else
            const int t = 0;
#endif
            Hist& off = thread_hist[t];
            const std::size_t lo = n * t / threads, hi = n * (t + 1) / threads;
            for (std::size_t i = lo; i < hi; ++i) {
                const Rec r = a[i];
                buf[off[(key(r) >> shift) & 0xFF]++] = r;
            }
        }
        std::swap(a, buf);
    }
    return a;
}

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

}  // namespace spoco
