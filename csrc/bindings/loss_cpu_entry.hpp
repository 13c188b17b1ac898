// Entry points of the CPU loss kernels, compiled once per instruction set
// (loss_cpu_entry.cpp with SPOCO_LOSS_ISA = generic, avx2, avx512) and chosen at run
// time by bind_loss.cpp. Pointers are raw CPU addresses validated by spoco.ops.fused;
// `dbl` selects float64 (else float32).
#pragma once
#include <cstdint>
#include <vector>

namespace spoco::loss_cpu {

/// Result of cluster_slots (see csrc/core/loss_kernels.hpp): slots per image C, whether a
/// label was negative (then nothing else is filled), labels (B, C) and anchor pixels (B, C).
struct SlotsResult {
    int64_t C = 1;
    bool negative = false;
    std::vector<int64_t> labels, pix;
};

}  // namespace spoco::loss_cpu

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
    void pixel_terms(bool backward, bool dbl, uintptr_t emb, uintptr_t emb_g, uintptr_t slot, uintptr_t inst_pix,   \
                     bool unlabeled_push, uintptr_t cons_pix, uintptr_t n_cons, int64_t B, int64_t D, int64_t N,    \
                     int64_t C, int64_t K, double h, double delta_v, double delta_d, uintptr_t means,               \
                     uintptr_t counts, const std::vector<uintptr_t>& outs, int threads);                            \
    void consistency_anchors(bool dbl, uintptr_t emb_f, uintptr_t emb_g, uintptr_t unlabeled, uintptr_t keys,       \
                             int64_t B, int64_t D, int64_t N, int64_t K, double delta_v, double coverage_stop,      \
                             uintptr_t pix, uintptr_t valid, int threads);                                          \
    bool all_finite(bool dbl, uintptr_t x, int64_t n, int threads);                                                 \
    SlotsResult cluster_slots(uintptr_t target, uintptr_t keys, int64_t B, int64_t N, int64_t ignore, bool sparse,  \
                              uintptr_t slot, int threads);

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
