// CUDA twins of the SPOCO loss kernels of csrc/core/loss_kernels.hpp (see loss.cuh).
// The per-element maths is csrc/core/loss_terms.hpp, shared with the CPU.
//
// Anchor x pixel sums: grid (pixel tiles, anchor chunks of kChunk, images); a thread
// is a pixel, the chunk's anchors sit in shared memory, every (anchor, output) is
// reduced by warp shuffles and per-warp shared rows. Their backward: grid (tiles,
// images); a block loops over the anchor chunks, accumulates dL/de of its own pixels
// in place (no other block touches them) and dL/da_k = -2 sum_i c_ki (e_i - a_k) as a
// small shared-memory product of the chunk's coefficients with the tile's embeddings.
// Own-slot reductions (segment sums, pull) use the same product with c_ki = w_i [slot_i = k],
// skipping chunks that no pixel of the tile belongs to.
#include <stdexcept>
#include <string>

#include "core/loss_terms.hpp"
#include "cuda/loss.cuh"

namespace spoco::cuda {
namespace {

using spoco::loss::kConsistency;
using spoco::loss::kSoftMask;
using spoco::loss::kUnlabeledPush;
using spoco::loss::term_outputs;

constexpr int kThreads = 128;            // threads per block, one pixel each
constexpr int kWarps = kThreads / 32;
constexpr int kPitch = kThreads + 1;     // shared rows padded against bank conflicts
constexpr int kChunk = 16;               // anchors per chunk
constexpr int64_t kMaxDim = 64;
constexpr int kEntries = (kChunk * (kMaxDim + 1) + kThreads - 1) / kThreads;  // per-thread product entries
constexpr int64_t kMinTile = 8 * kThreads;

inline void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string("spoco._cuda: ") + what + ": " + cudaGetErrorString(err));
}

inline int64_t tile_of(int64_t K) { return spoco::loss::reduction_tile(K, kMinTile); }
inline int64_t tiles(int64_t N, int64_t K) { return (N + tile_of(K) - 1) / tile_of(K); }
inline int64_t chunks(int64_t K) { return (K + kChunk - 1) / kChunk; }

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ int64_t valid_anchors(const int64_t* n_valid, int64_t b, int64_t K) {
    const int64_t v = n_valid[b];
    return v < 0 ? 0 : (v > K ? K : v);
}

// ------------------------------------------------------------ anchor x pixel, forward
template <int TERM, class T>
__global__ void anchor_pixel_forward_kernel(LossArgs<T> a, T* out, T* partial, int64_t tile, int64_t n_tiles) {
    constexpr int n_out = term_outputs(TERM);
    constexpr bool with_g = TERM == kConsistency;
    const int64_t B = a.B, D = a.D, N = a.N, K = a.K;
    const int64_t t = blockIdx.x, b = blockIdx.z, k0 = static_cast<int64_t>(blockIdx.y) * kChunk;
    const int64_t Kb = valid_anchors(a.n_valid, b, K);
    const int kn = static_cast<int>(Kb - k0 < kChunk ? Kb - k0 : kChunk);
    if (kn <= 0) return;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sa = reinterpret_cast<T*>(smem_raw);  // g-arrays only for the consistency term
    T* sag = sa + kChunk * D;
    T* se = sag + (with_g ? kChunk * D : 0);
    T* seg = se + D * kPitch;
    T* red = seg + (with_g ? D * kPitch : 0);  // [warp][k][3]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int64_t i = tid; i < kn * D; i += kThreads) {
        sa[i] = a.anchors[(b * K + k0) * D + i];
        if (with_g) sag[i] = a.anchors_g[(b * K + k0) * D + i];
    }
    for (int i = tid; i < kWarps * kChunk * 3; i += kThreads) red[i] = T(0);
    __syncthreads();
    const int64_t p_end = (t + 1) * tile < N ? (t + 1) * tile : N;
    for (int64_t base = t * tile; base < p_end; base += kThreads) {  // uniform trip count: shuffles stay full
        const int64_t p = base + tid;
        const bool in = p < p_end;
        for (int64_t d = 0; d < D; ++d) {  // each thread reads only its own column
            se[d * kPitch + tid] = in ? a.emb[(b * D + d) * N + p] : T(0);
            if (with_g) seg[d * kPitch + tid] = in ? a.emb_g[(b * D + d) * N + p] : T(0);
        }
        const T w = in ? (a.weight ? a.weight[b * N + p] : T(1)) : T(0);
        const int64_t s = (in && a.slot) ? a.slot[b * N + p] : -1;
        for (int k = 0; k < kn; ++k) {
            T dist = T(0), dist_g = T(0);
            for (int64_t d = 0; d < D; ++d) {
                const T x = se[d * kPitch + tid] - sa[k * D + d];
                dist += x * x;
                if (with_g) {
                    const T y = seg[d * kPitch + tid] - sag[k * D + d];
                    dist_g += y * y;
                }
            }
            T v[3];
            spoco::loss::term_values<TERM, T>(dist, dist_g, s == k0 + k, w, a.h, a.delta, v);
            for (int o = 0; o < n_out; ++o) {
                const T r = warp_sum(v[o]);
                if (lane == 0) red[(warp * kChunk + k) * 3 + o] += r;
            }
        }
    }
    __syncthreads();
    for (int i = tid; i < kn * n_out; i += kThreads) {
        const int k = i / n_out, o = i % n_out;
        T sum = T(0);
        for (int w = 0; w < kWarps; ++w) sum += red[(w * kChunk + k) * 3 + o];
        if (partial)
            partial[((b * n_tiles + t) * n_out + o) * K + k0 + k] = sum;
        else
            atomicAdd(&out[(o * B + b) * K + k0 + k], sum);
    }
}

/// out[(o * B + b) * K + k] = sum over tiles of partial[((b * n_tiles + t) * n_out + o) * K + k],
/// for k / kdiv < n_valid[b] (the rest stays 0).
template <class T>
__global__ void reduce_tiles_kernel(const T* partial, T* out, int64_t B, int64_t n_tiles, int64_t n_out, int64_t K,
                                    const int64_t* n_valid, int64_t K_valid, int64_t kdiv) {
    const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= B * n_out * K) return;
    const int64_t k = idx % K, o = (idx / K) % n_out, b = idx / (K * n_out);
    if (k / kdiv >= valid_anchors(n_valid, b, K_valid)) return;
    double sum = 0;
    for (int64_t t = 0; t < n_tiles; ++t) sum += static_cast<double>(partial[((b * n_tiles + t) * n_out + o) * K + k]);
    out[(o * B + b) * K + k] = static_cast<T>(sum);
}

// ------------------------------------------------------------ anchor x pixel, backward
template <int TERM, class T>
__global__ void anchor_pixel_backward_kernel(LossArgs<T> a, const T* grad_out, T* grad_emb, T* grad_anchors,
                                             T* partial, int64_t tile, int64_t n_tiles) {
    constexpr bool with_g = TERM == kConsistency;
    constexpr bool two = term_outputs(TERM) > 1;
    const int64_t B = a.B, D = a.D, N = a.N, K = a.K;
    const int64_t t = blockIdx.x, b = blockIdx.y;
    const int64_t Kb = valid_anchors(a.n_valid, b, K);
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sa = reinterpret_cast<T*>(smem_raw);  // g-arrays only for the consistency term
    T* sag = sa + kChunk * D;
    T* se = sag + (with_g ? kChunk * D : 0);
    T* seg = se + D * kPitch;
    T* sc = seg + (with_g ? D * kPitch : 0);  // [k][pixel] coefficients c_ki
    const int tid = threadIdx.x;
    const int64_t p_end = (t + 1) * tile < N ? (t + 1) * tile : N;
    for (int64_t k0 = 0; k0 < Kb; k0 += kChunk) {
        const int kn = static_cast<int>(Kb - k0 < kChunk ? Kb - k0 : kChunk);
        __syncthreads();  // the previous chunk is done with sa and sc
        for (int64_t i = tid; i < kn * D; i += kThreads) {
            sa[i] = a.anchors[(b * K + k0) * D + i];
            if (with_g) sag[i] = a.anchors_g[(b * K + k0) * D + i];
        }
        T acc[kEntries];
        for (int m = 0; m < kEntries; ++m) acc[m] = T(0);
        for (int64_t base = t * tile; base < p_end; base += kThreads) {
            __syncthreads();  // sa loaded; the previous product is done with se and sc
            const int64_t p = base + tid;
            const bool in = p < p_end;
            for (int64_t d = 0; d < D; ++d) {
                se[d * kPitch + tid] = in ? a.emb[(b * D + d) * N + p] : T(0);
                if (with_g) seg[d * kPitch + tid] = in ? a.emb_g[(b * D + d) * N + p] : T(0);
            }
            const T w = in ? (a.weight ? a.weight[b * N + p] : T(1)) : T(0);
            const int64_t s = (in && a.slot) ? a.slot[b * N + p] : -1;
            for (int k = 0; k < kn; ++k) {
                T dist = T(0), dist_g = T(0);
                for (int64_t d = 0; d < D; ++d) {
                    const T x = se[d * kPitch + tid] - sa[k * D + d];
                    dist += x * x;
                    if (with_g) {
                        const T y = seg[d * kPitch + tid] - sag[k * D + d];
                        dist_g += y * y;
                    }
                }
                const T g0 = grad_out[b * K + k0 + k], g1 = two ? grad_out[(B + b) * K + k0 + k] : T(0);
                sc[k * kPitch + tid] =
                    in ? spoco::loss::term_coef<TERM, T>(dist, dist_g, s == k0 + k, w, a.h, a.delta, g0, g1) : T(0);
            }
            if (in)  // dL/de_i += 2 sum_k c_ki (e_i - a_k): this block owns pixel p
                for (int64_t d = 0; d < D; ++d) {
                    T g = T(0);
                    for (int k = 0; k < kn; ++k) g += sc[k * kPitch + tid] * (se[d * kPitch + tid] - sa[k * D + d]);
                    grad_emb[(b * D + d) * N + p] += T(2) * g;
                }
            __syncthreads();  // sc and se complete
            for (int m = 0; m < kEntries; ++m) {
                const int64_t j = tid + static_cast<int64_t>(m) * kThreads;
                if (j >= kn * D) break;
                const int64_t k = j / D, d = j % D;
                const T ad = sa[k * D + d];
                T sum = T(0);
                for (int q = 0; q < kThreads; ++q) sum += sc[k * kPitch + q] * (se[d * kPitch + q] - ad);
                acc[m] += sum;
            }
        }
        for (int m = 0; m < kEntries; ++m) {
            const int64_t j = tid + static_cast<int64_t>(m) * kThreads;
            if (j >= kn * D) break;
            const T value = T(-2) * acc[m];
            if (partial)
                partial[(b * n_tiles + t) * K * D + k0 * D + j] = value;
            else
                atomicAdd(&grad_anchors[(b * K + k0) * D + j], value);
        }
    }
}

// ------------------------------------------------------------------ own-slot reductions
/// For the slots k of chunk blockIdx.y: vec[k] = scale * sum_{i: slot_i = k} w_i (e_i - a_k)
/// (a = 0 when anchors is null) and col[k] = sum_{i: slot_i = k} w_i (w = 1 when pixw is null).
template <class T>
__global__ void segment_reduce_kernel(const T* emb, const T* anchors, const T* pixw, const int64_t* slot, int64_t B,
                                      int64_t D, int64_t N, int64_t C, T scale, T* vec, T* col, T* partial,
                                      int64_t tile, int64_t n_tiles) {
    const int64_t t = blockIdx.x, b = blockIdx.z, k0 = static_cast<int64_t>(blockIdx.y) * kChunk;
    const int kn = static_cast<int>(C - k0 < kChunk ? C - k0 : kChunk);
    const int64_t per = C * (D + 1);
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sa = reinterpret_cast<T*>(smem_raw);
    T* se = sa + kChunk * D;
    T* sc = se + D * kPitch;
    const int tid = threadIdx.x;
    const int64_t p_end = (t + 1) * tile < N ? (t + 1) * tile : N;
    int present = 0;
    for (int64_t p = t * tile + tid; p < p_end; p += kThreads) {
        const int64_t s = slot[b * N + p];
        present |= (s >= k0 && s < k0 + kn);
    }
    if (!__syncthreads_or(present)) {  // no pixel of this tile is in the chunk
        if (partial)
            for (int64_t j = tid; j < kn * (D + 1); j += kThreads) partial[(b * n_tiles + t) * per + k0 * (D + 1) + j] = T(0);
        return;
    }
    for (int64_t i = tid; i < kn * D; i += kThreads) sa[i] = anchors ? anchors[(b * C + k0) * D + i] : T(0);
    T acc[kEntries];
    for (int m = 0; m < kEntries; ++m) acc[m] = T(0);
    for (int64_t base = t * tile; base < p_end; base += kThreads) {
        __syncthreads();
        const int64_t p = base + tid;
        const bool in = p < p_end;
        for (int64_t d = 0; d < D; ++d) se[d * kPitch + tid] = in ? emb[(b * D + d) * N + p] : T(0);
        const int64_t s = in ? slot[b * N + p] : -1;
        const T w = in ? (pixw ? pixw[b * N + p] : T(1)) : T(0);
        for (int k = 0; k < kn; ++k) sc[k * kPitch + tid] = s == k0 + k ? w : T(0);
        __syncthreads();
        for (int m = 0; m < kEntries; ++m) {
            const int64_t j = tid + static_cast<int64_t>(m) * kThreads;
            if (j >= kn * (D + 1)) break;
            const int64_t k = j / (D + 1), d = j % (D + 1);
            T sum = T(0);
            if (d < D) {
                const T ad = sa[k * D + d];
                for (int q = 0; q < kThreads; ++q) sum += sc[k * kPitch + q] * (se[d * kPitch + q] - ad);
            } else {
                for (int q = 0; q < kThreads; ++q) sum += sc[k * kPitch + q];
            }
            acc[m] += sum;
        }
    }
    for (int m = 0; m < kEntries; ++m) {
        const int64_t j = tid + static_cast<int64_t>(m) * kThreads;
        if (j >= kn * (D + 1)) break;
        const int64_t k = j / (D + 1), d = j % (D + 1);
        const T value = d < D ? scale * acc[m] : acc[m];
        if (partial) {
            partial[(b * n_tiles + t) * per + k0 * (D + 1) + j] = value;
        } else if (d < D) {
            if (vec) atomicAdd(&vec[(b * C + k0 + k) * D + d], value);
        } else if (col) {
            atomicAdd(&col[b * C + k0 + k], value);
        }
    }
}

template <class T>
__global__ void reduce_segment_tiles_kernel(const T* partial, int64_t B, int64_t D, int64_t C, int64_t n_tiles,
                                            T* vec, T* col) {
    const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t per = C * (D + 1);
    if (idx >= B * per) return;
    const int64_t b = idx / per, j = idx % per, k = j / (D + 1), d = j % (D + 1);
    double sum = 0;
    for (int64_t t = 0; t < n_tiles; ++t) sum += static_cast<double>(partial[(b * n_tiles + t) * per + j]);
    if (d < D) {
        if (vec) vec[(b * C + k) * D + d] = static_cast<T>(sum);
    } else if (col) {
        col[b * C + k] = static_cast<T>(sum);
    }
}

/// Per pixel of a slot: the pull hinge (forward) or its coefficient c_i = grad[slot] dv/dd
/// and dL/de_i = 2 c_i (e_i - mu) (backward). pixv (B, N) gets the hinge or c_i.
template <class T>
__global__ void pull_pixel_kernel(const T* emb, const T* means, const int64_t* slot, int64_t B, int64_t D, int64_t N,
                                  int64_t C, T delta_v, const T* grad, T* pixv, T* grad_emb) {
    const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= B * N) return;
    const int64_t b = idx / N, p = idx % N, s = slot[idx];
    if (s < 0 || s >= C) {
        pixv[idx] = T(0);
        return;
    }
    const T* mu = means + (b * C + s) * D;
    T dist = T(0);
    for (int64_t d = 0; d < D; ++d) {
        const T x = emb[(b * D + d) * N + p] - mu[d];
        dist += x * x;
    }
    if (!grad) {
        pixv[idx] = spoco::loss::pull_value(dist, delta_v);
        return;
    }
    const T c = grad[b * C + s] * spoco::loss::pull_coef(dist, delta_v);
    pixv[idx] = c;
    for (int64_t d = 0; d < D; ++d) grad_emb[(b * D + d) * N + p] = T(2) * c * (emb[(b * D + d) * N + p] - mu[d]);
}

template <class T>
__global__ void segment_sum_backward_kernel(const T* grad_sums, const int64_t* slot, int64_t B, int64_t D, int64_t N,
                                            int64_t C, T* grad_emb) {
    const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= B * D * N) return;
    const int64_t p = idx % N, d = (idx / N) % D, b = idx / (D * N);
    const int64_t s = slot[b * N + p];
    grad_emb[idx] = (s >= 0 && s < C) ? grad_sums[(b * C + s) * D + d] : T(0);
}

// ------------------------------------------------------------------ consistency anchors
struct AnchorState {
    int64_t* anchor;  // (B,) current anchor pixel
    int64_t* n_u;     // (B,) unlabeled pixels
    int64_t* done;    // (B,) 1 once the image stopped drawing
    int64_t* count;   // (B, n_tiles) uncovered pixels per tile
    int64_t* idx;     // (B, n_tiles) largest-key uncovered pixel per tile
    double* key;      // (B, n_tiles) its key
    uint8_t* free;    // (B, N) uncovered unlabeled pixels
};

/// j < 0: free = unlabeled. Else: uncover-mark the pixels within r2 of the current anchor
/// (in f or g). Then per tile: the number of free pixels and the free pixel of largest key.
template <class T>
__global__ void cover_kernel(const T* ef, const T* eg, const uint8_t* unlabeled, const double* keys, int64_t D,
                             int64_t N, T r2, int64_t tile, int64_t n_tiles, int j, AnchorState st) {
    const int64_t t = blockIdx.x, b = blockIdx.y;
    if (j >= 0 && st.done[b]) return;
    const int64_t anchor = j >= 0 ? st.anchor[b] : 0;
    const int64_t p_end = (t + 1) * tile < N ? (t + 1) * tile : N;
    int64_t count = 0, best = -1;
    double best_key = -1.0;
    for (int64_t i = t * tile + threadIdx.x; i < p_end; i += kThreads) {
        uint8_t& fr = st.free[b * N + i];
        if (j < 0) fr = unlabeled[b * N + i] != 0;
        if (!fr) continue;
        if (j >= 0) {
            T df = T(0), dg = T(0);
            for (int64_t d = 0; d < D; ++d) {
                const T x = ef[(b * D + d) * N + i] - ef[(b * D + d) * N + anchor];
                const T y = eg[(b * D + d) * N + i] - eg[(b * D + d) * N + anchor];
                df += x * x;
                dg += y * y;
            }
            if (df <= r2 || dg <= r2) {
                fr = 0;
                continue;
            }
        }
        ++count;
        const double k = keys[b * N + i];
        if (k > best_key) best_key = k, best = i;  // i increases: ties keep the lowest index
    }
    __shared__ int64_t s_count[kThreads], s_idx[kThreads];
    __shared__ double s_key[kThreads];
    s_count[threadIdx.x] = count, s_idx[threadIdx.x] = best, s_key[threadIdx.x] = best_key;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half >>= 1) {  // fixed tree: deterministic
        if (threadIdx.x < half) {
            const int o = threadIdx.x + half;
            s_count[threadIdx.x] += s_count[o];
            const bool better = s_key[o] > s_key[threadIdx.x] ||
                                (s_key[o] == s_key[threadIdx.x] && s_idx[o] >= 0 && s_idx[o] < s_idx[threadIdx.x]);
            if (better) s_key[threadIdx.x] = s_key[o], s_idx[threadIdx.x] = s_idx[o];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        st.count[b * n_tiles + t] = s_count[0];
        st.idx[b * n_tiles + t] = s_idx[0];
        st.key[b * n_tiles + t] = s_key[0];
    }
}

/// Anchor j of every image from the tile results (or the stop of its drawing).
__global__ void select_kernel(int64_t B, int64_t K, int64_t n_tiles, int j, double coverage_stop, AnchorState st,
                              int64_t* pix, uint8_t* valid) {
    const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b >= B || st.done[b]) return;
    int64_t left = 0, best = -1;
    double best_key = -1.0;
    for (int64_t t = 0; t < n_tiles; ++t) {  // tile order: ties keep the lowest index
        left += st.count[b * n_tiles + t];
        if (st.key[b * n_tiles + t] > best_key) best_key = st.key[b * n_tiles + t], best = st.idx[b * n_tiles + t];
    }
    if (j == 0) st.n_u[b] = left;
    if (left == 0 || static_cast<double>(left) < coverage_stop * static_cast<double>(st.n_u[b])) {
        st.done[b] = 1;
        return;
    }
    pix[b * K + j] = best;
    valid[b * K + j] = 1;
    st.anchor[b] = best;
}

// ------------------------------------------------------------------ launch helpers
inline dim3 blocks_for(int64_t n) { return dim3(static_cast<unsigned>((n + 255) / 256)); }

template <class T>
T* scratch_as(const Launch& l, int64_t offset_bytes, int64_t count) {
    if (offset_bytes + count * static_cast<int64_t>(sizeof(T)) > l.scratch_bytes)
        throw std::invalid_argument("spoco._cuda: scratch buffer too small");
    return reinterpret_cast<T*>(static_cast<unsigned char*>(l.scratch) + offset_bytes);
}

template <class K>
void set_smem(K kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
              "cudaFuncSetAttribute");
}

template <class F>
void by_term(int term, F&& f) {
    switch (term) {
        case kSoftMask: f(std::integral_constant<int, kSoftMask>{}); break;
        case kUnlabeledPush: f(std::integral_constant<int, kUnlabeledPush>{}); break;
        case kConsistency: f(std::integral_constant<int, kConsistency>{}); break;
        default: throw std::invalid_argument("spoco._cuda: unknown anchor x pixel term");
    }
}

void check_dims(int64_t B, int64_t D, int64_t N, int64_t K) {
    if (B < 1 || N < 1 || K < 0 || D < 1 || D > kMaxDim)
        throw std::invalid_argument("spoco._cuda loss kernels: need B >= 1, N >= 1, K >= 0 and 1 <= D <= 64");
}

}  // namespace

int64_t loss_scratch_bytes(const std::string& op, int64_t B, int64_t D, int64_t N, int64_t K, int64_t elem_size,
                           bool deterministic) {
    const int64_t nt = tiles(N, K);
    if (op == "consistency_anchors") {
        const int64_t ct = (N + kMinTile - 1) / kMinTile;
        return 3 * B * 8 + B * ct * (8 + 8 + 8) + B * N;
    }
    if (op == "pull_sums" || op == "pull_sums_backward")  // per-pixel values, then a segment reduction
        return B * N * elem_size + (deterministic ? B * nt * K * (D + 1) * elem_size : 0);
    if (!deterministic) return 0;
    if (op == "anchor_pixel") return B * nt * 3 * K * elem_size;
    if (op == "anchor_pixel_backward") return B * nt * K * D * elem_size;
    if (op == "segment_sum") return B * nt * K * (D + 1) * elem_size;
    throw std::invalid_argument("spoco._cuda: unknown op " + op);
}

template <class T>
void anchor_pixel_sums(int term, const LossArgs<T>& a, T* out, const Launch& l) {
    check_dims(a.B, a.D, a.N, a.K);
    if (a.K == 0) return;
    check(cudaSetDevice(l.device), "cudaSetDevice");
    const int64_t tile = tile_of(a.K), nt = tiles(a.N, a.K);
    T* partial = l.deterministic ? scratch_as<T>(l, 0, a.B * nt * 3 * a.K) : nullptr;
    by_term(term, [&](auto tag) {
        constexpr int TERM = decltype(tag)::value;
        const int64_t copies = TERM == kConsistency ? 2 : 1;
        const size_t smem = (copies * (kChunk * a.D + a.D * kPitch) + kWarps * kChunk * 3) * sizeof(T);
        auto kernel = anchor_pixel_forward_kernel<TERM, T>;
        set_smem(kernel, smem);
        kernel<<<dim3(static_cast<unsigned>(nt), static_cast<unsigned>(chunks(a.K)), static_cast<unsigned>(a.B)),
                 kThreads, smem, l.stream>>>(a, out, partial, tile, nt);
        check(cudaGetLastError(), "anchor_pixel_sums launch");
        if (partial) {
            constexpr int n_out = term_outputs(TERM);
            reduce_tiles_kernel<T><<<blocks_for(a.B * n_out * a.K), 256, 0, l.stream>>>(
                partial, out, a.B, nt, n_out, a.K, a.n_valid, a.K, 1);
            check(cudaGetLastError(), "anchor_pixel_sums reduction launch");
        }
    });
}

template <class T>
void anchor_pixel_sums_backward(int term, const LossArgs<T>& a, const T* grad_out, T* grad_emb, T* grad_anchors,
                                const Launch& l) {
    check_dims(a.B, a.D, a.N, a.K);
    if (a.K == 0) return;
    check(cudaSetDevice(l.device), "cudaSetDevice");
    const int64_t tile = tile_of(a.K), nt = tiles(a.N, a.K);
    T* partial = l.deterministic ? scratch_as<T>(l, 0, a.B * nt * a.K * a.D) : nullptr;
    by_term(term, [&](auto tag) {
        constexpr int TERM = decltype(tag)::value;
        const int64_t copies = TERM == kConsistency ? 2 : 1;
        const size_t smem = (copies * (kChunk * a.D + a.D * kPitch) + kChunk * kPitch) * sizeof(T);
        auto kernel = anchor_pixel_backward_kernel<TERM, T>;
        set_smem(kernel, smem);
        kernel<<<dim3(static_cast<unsigned>(nt), static_cast<unsigned>(a.B)), kThreads, smem, l.stream>>>(
            a, grad_out, grad_emb, grad_anchors, partial, tile, nt);
        check(cudaGetLastError(), "anchor_pixel_sums_backward launch");
    });
    if (partial) {
        reduce_tiles_kernel<T><<<blocks_for(a.B * a.K * a.D), 256, 0, l.stream>>>(partial, grad_anchors, a.B, nt, 1,
                                                                                  a.K * a.D, a.n_valid, a.K, a.D);
        check(cudaGetLastError(), "anchor_pixel_sums_backward reduction launch");
    }
}

namespace {
template <class T>
void segment_reduce(const T* emb, const T* anchors, const T* pixw, const int64_t* slot, int64_t B, int64_t D,
                    int64_t N, int64_t C, T scale, T* vec, T* col, T* partial, const Launch& l) {
    const int64_t tile = tile_of(C), nt = tiles(N, C);
    const size_t smem = (kChunk * D + D * kPitch + kChunk * kPitch) * sizeof(T);
    auto kernel = segment_reduce_kernel<T>;
    set_smem(kernel, smem);
    kernel<<<dim3(static_cast<unsigned>(nt), static_cast<unsigned>(chunks(C)), static_cast<unsigned>(B)), kThreads,
             smem, l.stream>>>(emb, anchors, pixw, slot, B, D, N, C, scale, vec, col, partial, tile, nt);
    check(cudaGetLastError(), "segment reduction launch");
    if (partial) {
        reduce_segment_tiles_kernel<T><<<blocks_for(B * C * (D + 1)), 256, 0, l.stream>>>(partial, B, D, C, nt, vec,
                                                                                         col);
        check(cudaGetLastError(), "segment reduction (tiles) launch");
    }
}
}  // namespace

template <class T>
void segment_sum(const T* emb, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C, T* sums, T* counts,
                 const Launch& l) {
    check_dims(B, D, N, C);
    if (C == 0) return;
    check(cudaSetDevice(l.device), "cudaSetDevice");
    T* partial = l.deterministic ? scratch_as<T>(l, 0, B * tiles(N, C) * C * (D + 1)) : nullptr;
    segment_reduce<T>(emb, nullptr, nullptr, slot, B, D, N, C, T(1), sums, counts, partial, l);
}

template <class T>
void segment_sum_backward(const T* grad_sums, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C,
                          T* grad_emb, const Launch& l) {
    check_dims(B, D, N, C);
    check(cudaSetDevice(l.device), "cudaSetDevice");
    segment_sum_backward_kernel<T><<<blocks_for(B * D * N), 256, 0, l.stream>>>(grad_sums, slot, B, D, N, C, grad_emb);
    check(cudaGetLastError(), "segment_sum_backward launch");
}

template <class T>
void pull_sums(const T* emb, const T* means, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C,
               T delta_v, T* out, const T* grad, T* grad_emb, T* grad_means, const Launch& l) {
    check_dims(B, D, N, C);
    if (C == 0) return;
    check(cudaSetDevice(l.device), "cudaSetDevice");
    T* pixv = scratch_as<T>(l, 0, B * N);
    const int64_t off = B * N * static_cast<int64_t>(sizeof(T));
    T* partial = l.deterministic ? scratch_as<T>(l, off, B * tiles(N, C) * C * (D + 1)) : nullptr;
    pull_pixel_kernel<T><<<blocks_for(B * N), 256, 0, l.stream>>>(emb, means, slot, B, D, N, C, delta_v, grad, pixv,
                                                                   grad_emb);
    check(cudaGetLastError(), "pull_sums launch");
    if (grad)  // dL/dmu_k = -2 sum_{i in k} c_i (e_i - mu_k)
        segment_reduce<T>(emb, means, pixv, slot, B, D, N, C, T(-2), grad_means, nullptr, partial, l);
    else  // sum_{i in k} of the hinge
        segment_reduce<T>(emb, nullptr, pixv, slot, B, D, N, C, T(1), nullptr, out, partial, l);
}

template <class T>
void consistency_anchors(const T* emb_f, const T* emb_g, const uint8_t* unlabeled, const double* keys, int64_t B,
                         int64_t D, int64_t N, int64_t K, T r2, double coverage_stop, int64_t* pix, uint8_t* valid,
                         const Launch& l) {
    check_dims(B, D, N, K);
    check(cudaSetDevice(l.device), "cudaSetDevice");
    const int64_t nt = (N + kMinTile - 1) / kMinTile;
    AnchorState st;
    int64_t off = 0;
    st.anchor = scratch_as<int64_t>(l, off, B), off += B * 8;
    st.n_u = scratch_as<int64_t>(l, off, B), off += B * 8;
    st.done = scratch_as<int64_t>(l, off, B), off += B * 8;
    st.count = scratch_as<int64_t>(l, off, B * nt), off += B * nt * 8;
    st.idx = scratch_as<int64_t>(l, off, B * nt), off += B * nt * 8;
    st.key = scratch_as<double>(l, off, B * nt), off += B * nt * 8;
    st.free = scratch_as<uint8_t>(l, off, B * N);
    check(cudaMemsetAsync(l.scratch, 0, 3 * B * 8, l.stream), "cudaMemsetAsync");
    const dim3 grid(static_cast<unsigned>(nt), static_cast<unsigned>(B));
    const dim3 sel(static_cast<unsigned>((B + 127) / 128));
    for (int j = 0; j < K; ++j) {
        cover_kernel<T><<<grid, kThreads, 0, l.stream>>>(emb_f, emb_g, unlabeled, keys, D, N, r2, kMinTile, nt,
                                                         j == 0 ? -1 : j - 1, st);
        check(cudaGetLastError(), "consistency anchors (cover) launch");
        select_kernel<<<sel, 128, 0, l.stream>>>(B, K, nt, j, coverage_stop, st, pix, valid);
        check(cudaGetLastError(), "consistency anchors (select) launch");
    }
}

#define SPOCO_INSTANTIATE(T)                                                                                        \
    template void anchor_pixel_sums<T>(int, const LossArgs<T>&, T*, const Launch&);                                 \
    template void anchor_pixel_sums_backward<T>(int, const LossArgs<T>&, const T*, T*, T*, const Launch&);          \
    template void segment_sum<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t, T*, T*,              \
                                 const Launch&);                                                                    \
    template void segment_sum_backward<T>(const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t, T*,         \
                                          const Launch&);                                                           \
    template void pull_sums<T>(const T*, const T*, const int64_t*, int64_t, int64_t, int64_t, int64_t, T, T*,       \
                               const T*, T*, T*, const Launch&);                                                    \
    template void consistency_anchors<T>(const T*, const T*, const uint8_t*, const double*, int64_t, int64_t,       \
                                         int64_t, int64_t, T, double, int64_t*, uint8_t*, const Launch&);
SPOCO_INSTANTIATE(float)
SPOCO_INSTANTIATE(double)
#undef SPOCO_INSTANTIATE

}  // namespace spoco::cuda
