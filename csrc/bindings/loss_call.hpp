// The arguments of one call of a loss kernel, by name (CPU `spoco._core.loss_*` and CUDA
// `spoco._cuda.loss_*` alike). spoco/ops/_kernel.py fills it from tensors and numbers by
// field name, so an argument cannot be passed in the wrong position, and a misspelled
// field is an AttributeError. Each entry point reads the fields its kernel documents;
// pointers not used by a call stay 0. Pointer fields hold torch's data_ptr() of a tensor
// validated in Python (dtype, device, shape, contiguity); `dbl` selects float64 (else
// float32) for the floating-point ones.
#pragma once
#include <cstdint>

#include "bindings/pointers.hpp"

namespace spoco::bindings {

struct LossCall {
    bool dbl = false;              // float tensors are float64
    bool backward = false;         // the gradient pass of a forward/backward kernel
    int term = 0;                  // anchor x pixel term id (csrc/core/loss_terms.hpp)
    bool unlabeled_push = false;   // pixel_terms: compute Eq. 6
    bool sparse = false;           // cluster_slots: label 0 = unlabeled
    int64_t B = 0, D = 0, N = 0;   // images, embedding channels, pixels per image
    int64_t C = 0, K = 0;          // cluster slots, anchors
    int64_t ignore_index = -1;
    int64_t n = 0;                 // all_finite: elements
    double h = 0, delta = 0, delta_v = 0, delta_d = 0, coverage_stop = 0;
    int threads = 1;               // CPU: OpenMP threads
    // inputs
    uintptr_t emb = 0, emb_g = 0, anchors = 0, anchors_g = 0, slot = 0, weight = 0, n_valid = 0;
    uintptr_t inst_pix = 0, cons_pix = 0, n_cons = 0, unlabeled = 0, keys = 0, target = 0, x = 0;
    // outputs (means/counts are inputs of the backward passes)
    uintptr_t out = 0, sums = 0, counts = 0, means = 0, pull = 0, inst = 0, upush = 0, cons = 0, up_active = 0;
    uintptr_t pix = 0, valid = 0;
    // gradients of the loss with respect to ...
    uintptr_t grad_out = 0, grad_sums = 0, grad_means = 0, grad_pull = 0, grad_inst = 0, grad_upush = 0;
    uintptr_t grad_cons = 0, grad_emb = 0, grad_anchors = 0;
    // CUDA: scratch memory from torch's allocator, stream, device, deterministic reductions
    uintptr_t scratch = 0, stream = 0;
    int64_t scratch_bytes = 0;
    int device = 0;
    bool deterministic = false;
};

/// The anchor x pixel arguments of a call, in the kernels' own struct (the CPU
/// spoco::loss::AnchorPixelArgs<T> or the CUDA spoco::cuda::LossArgs<T>: same fields).
template <class T, class Args>
Args anchor_pixel_args(const LossCall& c) {
    Args a;
    a.emb = cp<T>(c.emb), a.anchors = cp<T>(c.anchors), a.emb_g = cp<T>(c.emb_g), a.anchors_g = cp<T>(c.anchors_g);
    a.slot = cp<int64_t>(c.slot), a.weight = cp<T>(c.weight), a.n_valid = cp<int64_t>(c.n_valid);
    a.B = c.B, a.D = c.D, a.N = c.N, a.K = c.K, a.h = static_cast<T>(c.h), a.delta = static_cast<T>(c.delta);
    return a;
}

}  // namespace spoco::bindings
