// Sparse contingency (overlap) table of two label images: for every pair of
// labels (a, b) that occurs at some pixel, the number of pixels labelled a in the
// first image and b in the second.
//
// One pass over the pixels. Each thread counts its contiguous chunk into its own
// open-addressing hash map keyed on the 128-bit pair; a run of equal pairs (the
// common case: objects are spatially coherent) costs one map update. The maps are
// then concatenated, sorted by (a, b) and equal pairs summed, so the result is
// identical for every thread count. Labels may be any int64 values.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/common.hpp"

namespace spoco {

struct PairCount {
    int64_t a, b, n;
};

/// Hash map (a, b) -> count with linear probing; a slot with n == 0 is empty.
class PairCounter {
public:
    explicit PairCounter(std::size_t capacity = 1024) {
        std::size_t c = 16;
        while (c < 2 * capacity) c <<= 1;
        slots_.assign(c, PairCount{0, 0, 0});
    }

    void add(int64_t a, int64_t b, int64_t n) {
        std::size_t i = hash(a, b) & (slots_.size() - 1);
        for (;;) {
            PairCount& s = slots_[i];
            if (s.n == 0) {
                s = PairCount{a, b, n};
                if (++size_ * 2 > slots_.size()) grow();
                return;
            }
            if (s.a == a && s.b == b) {
                s.n += n;
                return;
            }
            i = (i + 1) & (slots_.size() - 1);
        }
    }

    /// Appends every (a, b, n) held, in slot order.
    void dump(std::vector<PairCount>& out) const {
        for (const PairCount& s : slots_)
            if (s.n != 0) out.push_back(s);
    }

    std::size_t size() const { return size_; }

private:
    static uint64_t mix(uint64_t x) {  // splitmix64 finaliser
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ull;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebull;
        x ^= x >> 31;
        return x;
    }
    static std::size_t hash(int64_t a, int64_t b) {
        return static_cast<std::size_t>(mix(mix(static_cast<uint64_t>(a)) + static_cast<uint64_t>(b)));
    }

    void grow() {
        std::vector<PairCount> old(slots_.size() * 2, PairCount{0, 0, 0});
        old.swap(slots_);
        size_ = 0;
        for (const PairCount& s : old)
            if (s.n != 0) add(s.a, s.b, s.n);
    }

    std::vector<PairCount> slots_;
    std::size_t size_ = 0;
};

/// Counts every pair (a[i], b[i]), i < n. Returns the pairs sorted by (a, b),
/// each once, with n >= 1.
inline std::vector<PairCount> contingency_table(const int64_t* a, const int64_t* b, std::size_t n,
                                                int threads) {
    threads = std::max(1, std::min<int>(resolve_threads(threads), static_cast<int>(n / (1 << 20)) + 1));
    std::vector<std::vector<PairCount>> parts(threads);
#pragma omp parallel num_threads(threads)
    {
#ifdef SPOCO_HAVE_OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        const std::size_t lo = n * t / threads, hi = n * (t + 1) / threads;
        PairCounter counter;
        if (lo < hi) {
            int64_t ca = a[lo], cb = b[lo], run = 0;
            for (std::size_t i = lo; i < hi; ++i) {
                if (a[i] == ca && b[i] == cb) {
                    ++run;
                    continue;
                }
                counter.add(ca, cb, run);
                ca = a[i];
                cb = b[i];
                run = 1;
            }
            counter.add(ca, cb, run);
        }
        parts[t].reserve(counter.size());
        counter.dump(parts[t]);
    }
    std::vector<PairCount> all;
    std::size_t total = 0;
    for (const auto& p : parts) total += p.size();
    all.reserve(total);
    for (auto& p : parts) {
        all.insert(all.end(), p.begin(), p.end());
        std::vector<PairCount>().swap(p);
    }
    std::sort(all.begin(), all.end(),
              [](const PairCount& x, const PairCount& y) { return x.a < y.a || (x.a == y.a && x.b < y.b); });
    // Sum the entries of a pair that several threads saw.
    std::size_t out = 0;
    for (std::size_t i = 0; i < all.size(); ++i) {
        if (out > 0 && all[out - 1].a == all[i].a && all[out - 1].b == all[i].b)
            all[out - 1].n += all[i].n;
        else
            all[out++] = all[i];
    }
    all.resize(out);
    return all;
}

}  // namespace spoco
