// Shared definitions for the torch-free core.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__CUDACC__)
#define SPOCO_HD __host__ __device__ __forceinline__
#else
#define SPOCO_HD inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SPOCO_PREFETCH(addr) __builtin_prefetch(addr)
// On a lambda, after its parameters: the loops call edge decoders several times per
// edge, and a call instead of inline code doubles their time (GCC stops inlining
// them once a translation unit instantiates many loops).
#define SPOCO_ALWAYS_INLINE __attribute__((always_inline))
#else
#define SPOCO_PREFETCH(addr) ((void)0)
#define SPOCO_ALWAYS_INLINE
#endif

#ifdef SPOCO_HAVE_OPENMP
#include <omp.h>
#endif

// Relaxed atomic load/store of a 32-bit word that other threads may write (plain
// moves on x86; MSVC's volatile accesses are atomic for aligned words).
#if defined(__GNUC__) || defined(__clang__)
#define SPOCO_RELAXED_LOAD(ref) __atomic_load_n(&(ref), __ATOMIC_RELAXED)
#define SPOCO_RELAXED_STORE(ref, value) __atomic_store_n(&(ref), (value), __ATOMIC_RELAXED)
#else
#define SPOCO_RELAXED_LOAD(ref) (*static_cast<const volatile uint32_t*>(&(ref)))
#define SPOCO_RELAXED_STORE(ref, value) (*static_cast<volatile uint32_t*>(&(ref)) = (value))
#endif

namespace spoco {

/// Frees memory from malloc, realloc or aligned_alloc.
struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
};
/// malloc'ed storage, so that it can shrink in place with realloc.
using MallocPtr = std::unique_ptr<void, FreeDeleter>;

inline MallocPtr malloc_or_throw(std::size_t bytes) {
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p) throw std::bad_alloc();
    return MallocPtr(p);
}

/// Size (and alignment) of a transparent huge page on x86-64 Linux.
constexpr std::size_t kHugePageBytes = std::size_t(2) << 20;

/// Whether malloc_huge_or_throw may ask for transparent huge pages: yes unless the
/// environment variable SPOCO_HUGE_PAGES is "0" (read at each allocation).
inline bool huge_pages_allowed() {
    const char* v = std::getenv("SPOCO_HUGE_PAGES");
    return !(v && v[0] == '0' && v[1] == '\0');
}

/// Storage of at least `bytes`, aligned to a cache line, for arrays read at random (the
/// mutex watershed's union-find words and mutex lists). On Linux, arrays of 2 MiB or
/// more are 2 MiB-aligned and advised to use transparent huge pages (MADV_HUGEPAGE;
/// pages are faulted in on first write, after the advice): random reads over tens of
/// MiB then miss the TLB far less often (2D benchmark: about -10 % at one thread). The
/// advice is only asked for these arrays: asking for it on every allocation (glibc's
/// hugetlb tunable) made the 3D benchmark 12 % slower. `advise = false`: no advice,
/// for an array that may stay mostly untouched (a huge page is zeroed whole on its
/// first write, a normal page only where written).
inline MallocPtr malloc_huge_or_throw(std::size_t bytes, bool advise = true) {
    constexpr std::size_t kLine = 64;
    std::size_t align = kLine;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const bool huge = advise && bytes >= kHugePageBytes && huge_pages_allowed();
    if (huge) align = kHugePageBytes;
#endif
    const std::size_t rounded = bytes ? (bytes + align - 1) / align * align : align;
    void* p = std::aligned_alloc(align, rounded);  // size a multiple of the alignment (C11)
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: on failure, normal pages
#endif
    return MallocPtr(p);
}

/// Quotient n / d of 64-bit integers, by one multiplication when n < 2^32 (then
/// exact for every d < 2^32: Lemire, Kaser & Kurz, "Faster remainder by direct
/// computation", 2019), by a division otherwise. The mutex watershed decodes edge
/// ids this way: a 64-bit division costs tens of cycles, the loops do it per edge.
class FastDiv {
public:
    explicit FastDiv(uint64_t d) : d_(d), magic_(d > 1 && d < (uint64_t(1) << 32) ? ~uint64_t(0) / d + 1 : 0) {}
    uint64_t operator()(uint64_t n) const {
        if (magic_ == 0 || (n >> 32)) return n / d_;
#if defined(__SIZEOF_INT128__)
        return static_cast<uint64_t>((static_cast<unsigned __int128>(magic_) * n) >> 64);
#else
        return n / d_;
#endif
    }

private:
    uint64_t d_, magic_;
};

/// Number of threads the OpenMP runtime would use (1 without OpenMP).
inline int max_threads() {
#ifdef SPOCO_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/// Set the default thread count of the OpenMP runtime (no-op without OpenMP).
inline void set_max_threads(int threads) {
#ifdef SPOCO_HAVE_OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#else
    (void)threads;
#endif
}

/// Resolve a user thread count: <= 0 means "OpenMP default".
inline int resolve_threads(int threads) {
    return threads > 0 ? threads : max_threads();
}

}  // namespace spoco
