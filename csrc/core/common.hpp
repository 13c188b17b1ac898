// Shared definitions for the torch-free core.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#if defined(__CUDACC__)
#define SPOCO_HD __host__ __device__ __forceinline__
#else
#define SPOCO_HD inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SPOCO_PREFETCH(addr) __builtin_prefetch(addr)
#else
#define SPOCO_PREFETCH(addr) ((void)0)
#endif

#ifdef SPOCO_HAVE_OPENMP
#include <omp.h>
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
