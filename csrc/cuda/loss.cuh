// Host launchers of the SPOCO loss kernels on the GPU (no libtorch; raw device pointers).
// CUDA twins of csrc/core/loss_kernels.hpp: same layouts, same per-element maths
// (csrc/core/loss_terms.hpp). Scratch memory comes from the caller (a torch tensor of
// loss_scratch_bytes(...) bytes); launchers never allocate, synchronise or copy to the
// host, and throw std::runtime_error on launch errors.
//
// Reductions over pixels: one block per (image, pixel tile[, anchor chunk]) reduces in
// shared memory, then either one atomicAdd per (block, output) or, when `deterministic`,
// writes per-tile partials that a second kernel adds in tile order (bit-identical runs).
#pragma once
#include <cstdint>
#include <string>

#include <cuda_runtime.h>

namespace spoco::cuda {

/// Bytes of scratch memory the launcher `op` needs ("anchor_pixel", "anchor_pixel_backward",
/// "segment_sum", "pull_sums", "pull_sums_backward", "consistency_anchors").
int64_t loss_scratch_bytes(const std::string& op, int64_t B, int64_t D, int64_t N, int64_t K, int64_t elem_size,
                           bool deterministic);

template <class T>
struct LossArgs {
    const T* emb = nullptr;
    const T* anchors = nullptr;
    const T* emb_g = nullptr;
    const T* anchors_g = nullptr;
    const int64_t* slot = nullptr;
    const T* weight = nullptr;
    const int64_t* n_valid = nullptr;
    int64_t B = 0, D = 0, N = 0, K = 0;
    T h = T(0), delta = T(0);
};

struct Launch {
    void* scratch;
    int64_t scratch_bytes;
    bool deterministic;
    int device;
    cudaStream_t stream;
};

/// out (n_out, B, K), zero-initialised by the caller.
template <class T>
void anchor_pixel_sums(int term, const LossArgs<T>& a, T* out, const Launch& l);

/// grad_emb (B, D, N) and grad_anchors (B, K, D), both zero-initialised by the caller.
template <class T>
void anchor_pixel_sums_backward(int term, const LossArgs<T>& a, const T* grad_out, T* grad_emb, T* grad_anchors,
                                const Launch& l);

/// sums (B, C, D) and counts (B, C), zero-initialised by the caller.
template <class T>
void segment_sum(const T* emb, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C, T* sums, T* counts,
                 const Launch& l);

template <class T>
void segment_sum_backward(const T* grad_sums, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C,
                          T* grad_emb, const Launch& l);

/// Forward (grad == nullptr): out (B, C). Backward: grad_emb (B, D, N), grad_means (B, C, D),
/// both zero-initialised by the caller.
template <class T>
void pull_sums(const T* emb, const T* means, const int64_t* slot, int64_t B, int64_t D, int64_t N, int64_t C,
               T delta_v, T* out, const T* grad, T* grad_emb, T* grad_means, const Launch& l);

/// pix (B, K) int64 and valid (B, K) bool (uint8), zero-initialised by the caller.
template <class T>
void consistency_anchors(const T* emb_f, const T* emb_g, const uint8_t* unlabeled, const double* keys, int64_t B,
                         int64_t D, int64_t N, int64_t K, T r2, double coverage_stop, int64_t* pix, uint8_t* valid,
                         const Launch& l);

}  // namespace spoco::cuda
