// Entry points of the CPU loss kernels, compiled once per instruction set
// (loss_cpu_entry.cpp with SPOCO_LOSS_ISA = generic, avx2, avx512) and chosen at run
// time by bind_loss.cpp. Pointers are raw CPU addresses validated by spoco.ops.fused;
// `dbl` selects float64 (else float32).
#pragma once
#include <cstdint>
#include <vector>

#define SPOCO_LOSS_ENTRY_DECLS                                                                                      \
    void anchor_pixel(int term, bool backward, bool dbl, uintptr_t emb, uintptr_t anchors, uintptr_t emb_g,         \
                      uintptr_t anchors_g, uintptr_t slot, uintptr_t weight, uintptr_t n_valid, int64_t B,          \
                      int64_t D, int64_t N, int64_t K, double h, double delta, uintptr_t out, uintptr_t grad_out,   \
                      uintptr_t grad_emb, uintptr_t grad_anchors, int threads);                                     \
    void segment_sum(bool dbl, uintptr_t emb, uintptr_t slot, int64_t B, int64_t D, int64_t N, int64_t C,           \
                     uintptr_t sums, uintptr_t counts, int threads);                                                \
    void segment_sum_backward(bool dbl, uintptr_t grad_sums, uintptr_t slot, int64_t B, int64_t D, int64_t N,       \
                              int64_t C, uintptr_t grad_emb, int threads);                                          \
    void pull_sums(bool dbl, uintptr_t emb, uintptr_t means, uintptr_t slot, int64_t B, int64_t D, int64_t N,       \
                   int64_t C, double delta_v, uintptr_t out, uintptr_t grad, uintptr_t grad_emb,                    \
                   uintptr_t grad_means, int threads);                                                              \
    void consistency_anchors(bool dbl, uintptr_t emb_f, uintptr_t emb_g, uintptr_t unlabeled, uintptr_t keys,       \
                             int64_t B, int64_t D, int64_t N, int64_t K, double delta_v, double coverage_stop,      \
                             uintptr_t pix, uintptr_t valid, int threads);                                          \
    bool all_finite(bool dbl, uintptr_t x, int64_t n, int threads);                                                 \
    void anchor_terms_backward(bool dbl, const std::vector<int64_t>& terms, const std::vector<uintptr_t>& ptrs,     \
                               const std::vector<int64_t>& Ks, const std::vector<double>& hs,                       \
                               const std::vector<double>& deltas, uintptr_t emb, int64_t B, int64_t D, int64_t N,   \
                               uintptr_t grad_emb, int threads);

namespace spoco::loss_cpu {
namespace generic {
SPOCO_LOSS_ENTRY_DECLS
}
namespace avx2 {
SPOCO_LOSS_ENTRY_DECLS
}
namespace avx512 {
SPOCO_LOSS_ENTRY_DECLS
}
}  // namespace spoco::loss_cpu
