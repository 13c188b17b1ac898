// A minimal SIMD vector for the hot loops of the CPU loss kernels: one register of the
// instruction set the translation unit is compiled for (16 floats with AVX-512, 8 with
// AVX2, 4 with SSE2). GCC/Clang vector extensions keep values in registers across loops
// where auto-vectorised arrays would go through memory; other compilers get a plain
// array with the same interface. Only +, -, *, fused multiply-add and loads/stores are
// used, so results depend on the build only through FMA rounding and the lane count.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif

#ifndef SPOCO_LOSS_ISA
#define SPOCO_LOSS_ISA generic
#endif

namespace spoco::loss {
inline namespace SPOCO_LOSS_ISA {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

#if defined(__GNUC__) || defined(__clang__)
template <class T>
struct VecType {
    typedef T type __attribute__((vector_size(kVecBytes)));
};
/// One SIMD register of T.
template <class T>
using Vec = typename VecType<T>::type;

template <class T>
inline Vec<T> vload(const T* p) {
    Vec<T> v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
template <class T>
inline void vstore(T* p, const Vec<T>& v) {
    std::memcpy(p, &v, sizeof(v));
}
template <class T>
inline Vec<T> vsplat(T x) {
    return x - Vec<T>{};  // x - (+0) = x exactly, so this folds to a single broadcast
}
/// a * b + c, fused where the instruction set has FMA (compilers do not contract a product
/// that feeds two sums).
template <class T>
inline Vec<T> vfma(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4)
        return reinterpret_cast<Vec<T>>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b),
                                                        reinterpret_cast<__m512>(c)));
    else
        return reinterpret_cast<Vec<T>>(_mm512_fmadd_pd(reinterpret_cast<__m512d>(a), reinterpret_cast<__m512d>(b),
                                                        reinterpret_cast<__m512d>(c)));
#elif defined(__FMA__) && defined(__AVX__)
    if constexpr (sizeof(T) == 4)
        return reinterpret_cast<Vec<T>>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                                        reinterpret_cast<__m256>(c)));
    else
        return reinterpret_cast<Vec<T>>(_mm256_fmadd_pd(reinterpret_cast<__m256d>(a), reinterpret_cast<__m256d>(b),
                                                        reinterpret_cast<__m256d>(c)));
#else
    return a * b + c;
#endif
}
#else
template <class T>
struct Vec {
    static constexpr int n = kVecBytes / static_cast<int>(sizeof(T));
    T v[n];
    T& operator[](int i) { return v[i]; }
    T operator[](int i) const { return v[i]; }
#define SPOCO_VEC_OP(op)                                                      \
    friend Vec operator op(Vec a, const Vec& b) {                             \
        for (int i = 0; i < n; ++i) a.v[i] = a.v[i] op b.v[i];                \
        return a;                                                             \
    }                                                                         \
    Vec& operator op##=(const Vec& b) { return *this = *this op b; }
    SPOCO_VEC_OP(+)
    SPOCO_VEC_OP(-)
    SPOCO_VEC_OP(*)
#undef SPOCO_VEC_OP
};
template <class T>
inline Vec<T> vload(const T* p) {
    Vec<T> v;
    std::memcpy(v.v, p, sizeof(v.v));
    return v;
}
template <class T>
inline void vstore(T* p, const Vec<T>& v) {
    std::memcpy(p, v.v, sizeof(v.v));
}
template <class T>
inline Vec<T> vsplat(T x) {
    Vec<T> v;
    for (int i = 0; i < Vec<T>::n; ++i) v.v[i] = x;
    return v;
}
template <class T>
inline Vec<T> vfma(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
    return a * b + c;
}
#endif

/// Elements of T in one Vec<T>.
template <class T>
constexpr int64_t vec_width() {
    return kVecBytes / static_cast<int64_t>(sizeof(T));
}

}  // namespace SPOCO_LOSS_ISA
}  // namespace spoco::loss
