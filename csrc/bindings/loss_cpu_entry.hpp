// Entry points of the CPU loss kernels, compiled once per instruction set
// (loss_cpu_entry.cpp with SPOCO_LOSS_ISA = generic, avx2, avx512) and chosen at run
// time by bind_loss.cpp. Arguments come by name in a LossCall (loss_call.hpp).
#pragma once
#include <cstdint>
#include <vector>

#include "bindings/loss_call.hpp"

namespace spoco::loss_cpu {

/// Result of cluster_slots (see csrc/core/loss_kernels.hpp): slots per image C, whether a
/// label was negative (then nothing else is filled), labels (B, C) and anchor pixels (B, C).
struct SlotsResult {
    int64_t C = 1;
    bool negative = false;
    std::vector<int64_t> labels, pix;
};

}  // namespace spoco::loss_cpu

// Each entry reads the LossCall fields of its kernel (see bind_loss.cpp for which).
#define SPOCO_LOSS_ENTRY_DECLS                                   \
    void anchor_pixel(const spoco::bindings::LossCall& c);      \
    void segment_sum(const spoco::bindings::LossCall& c);       \
    void segment_sum_backward(const spoco::bindings::LossCall& c); \
    void pull_sums(const spoco::bindings::LossCall& c);         \
    void pixel_terms(const spoco::bindings::LossCall& c);       \
    void consistency_anchors(const spoco::bindings::LossCall& c); \
    bool all_finite(const spoco::bindings::LossCall& c);        \
    SlotsResult cluster_slots(const spoco::bindings::LossCall& c);

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
