"""The CPU loss kernels' instruction-set variants (``SPOCO_CPU_ISA``) give the same loss,
terms and gradient up to rounding (FMA contraction and lane count): every variant this CPU
runs is compared with the portable one, in a fresh process each (the choice is made once
per process)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from spoco import _core

# Runs in a child process: the loss, its terms and the gradient of f for the saved inputs.
CHILD = r"""
import json, sys, torch
from spoco import SPOCOLoss, _core
torch.set_num_threads(2)
inp = torch.load(sys.argv[1])
out = {"isa": _core.loss_isa()}
for key in ("f64", "f32"):
    f = inp[key].clone().requires_grad_()
    # float32 without the consistency term: its anchors are decided by float comparisons
    # (covered or not), which rounding may flip; float64 runs every kernel
    loss = SPOCOLoss(sparse=True, consistency_weight=1.0 if key == "f64" else 0.0)
    g = inp["g"].to(f.dtype) if key == "f64" else None
    total, terms = loss(f, inp["t"], g, generator=torch.Generator().manual_seed(inp["seed"]), return_terms=True)
    total.backward()
    out[key] = {"terms": {k: float(v) for k, v in terms.items()}, "grad": f.grad.double().flatten().tolist()}
print("RESULT", json.dumps(out))
"""


def _run(isa, path):
    env = {**os.environ, "SPOCO_CPU_ISA": isa}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_every_instruction_set_gives_the_portable_result(batch, seed, tmp_path):
    # 40x40 images, 20 consistency anchors: every kernel (slots, anchors, pixel terms both ways) runs
    # on full and partial pixel blocks.
    f, g, t = batch(seed % 2**31, B=3, spatial=(40, 37), D=5, n_objects=12, ignore=0.05)
    path = tmp_path / "inputs.pt"
    torch.save({"f64": f, "f32": f.float(), "g": g, "t": t, "seed": seed % 2**31}, path)
    ref = _run("generic", path)
    assert ref["isa"] == "generic"
    machine = _core.loss_isa()  # the best variant this CPU runs (the default)
    for isa in sorted({"avx2", machine} - {"generic"}) if machine != "generic" else []:
        got = _run(isa, path)
        assert got["isa"] == isa
        for key, rtol in (("f64", 1e-9), ("f32", 1e-5)):
            for name, value in ref[key]["terms"].items():
                assert got[key]["terms"][name] == pytest.approx(value, rel=rtol, abs=rtol * 1e-3), \
                    f"{isa} {key} term {name} (seed {seed})"
            a, b = torch.tensor(got[key]["grad"]), torch.tensor(ref[key]["grad"])
            scale = b.abs().max().item()
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, msg=f"{isa} {key} gradient (seed {seed})")
    if machine == "generic":
        pytest.skip("this CPU runs the portable variant only")
