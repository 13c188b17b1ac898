// pybind11 class of LossCall (module-local: _core and _cuda each have their own).
#pragma once
#include <pybind11/pybind11.h>

#include "bindings/loss_call.hpp"

namespace spoco::bindings {

inline void register_loss_call(pybind11::module_& m) {
    using L = LossCall;
    pybind11::class_<L>(m, "LossCall", pybind11::module_local(),
                        "Named arguments of one loss kernel call (see csrc/bindings/loss_call.hpp).")
        .def(pybind11::init<>())
#define SPOCO_FIELD(name) .def_readwrite(#name, &L::name)
        SPOCO_FIELD(dbl) SPOCO_FIELD(backward) SPOCO_FIELD(term) SPOCO_FIELD(unlabeled_push) SPOCO_FIELD(sparse)
        SPOCO_FIELD(B) SPOCO_FIELD(D) SPOCO_FIELD(N) SPOCO_FIELD(C) SPOCO_FIELD(K) SPOCO_FIELD(ignore_index)
        SPOCO_FIELD(n) SPOCO_FIELD(h) SPOCO_FIELD(delta) SPOCO_FIELD(delta_v) SPOCO_FIELD(delta_d)
        SPOCO_FIELD(coverage_stop) SPOCO_FIELD(threads)
        SPOCO_FIELD(emb) SPOCO_FIELD(emb_g) SPOCO_FIELD(anchors) SPOCO_FIELD(anchors_g) SPOCO_FIELD(slot)
        SPOCO_FIELD(weight) SPOCO_FIELD(n_valid) SPOCO_FIELD(inst_pix) SPOCO_FIELD(cons_pix) SPOCO_FIELD(n_cons)
        SPOCO_FIELD(unlabeled) SPOCO_FIELD(keys) SPOCO_FIELD(target) SPOCO_FIELD(x)
        SPOCO_FIELD(out) SPOCO_FIELD(sums) SPOCO_FIELD(counts) SPOCO_FIELD(means) SPOCO_FIELD(pull)
        SPOCO_FIELD(inst) SPOCO_FIELD(upush) SPOCO_FIELD(cons) SPOCO_FIELD(up_active) SPOCO_FIELD(pix)
        SPOCO_FIELD(valid)
        SPOCO_FIELD(grad_out) SPOCO_FIELD(grad_sums) SPOCO_FIELD(grad_means) SPOCO_FIELD(grad_pull)
        SPOCO_FIELD(grad_inst) SPOCO_FIELD(grad_upush) SPOCO_FIELD(grad_cons) SPOCO_FIELD(grad_emb)
        SPOCO_FIELD(grad_anchors)
        SPOCO_FIELD(scratch) SPOCO_FIELD(stream) SPOCO_FIELD(scratch_bytes) SPOCO_FIELD(device)
        SPOCO_FIELD(deterministic)
#undef SPOCO_FIELD
        ;
}

}  // namespace spoco::bindings
