"""SPOCOLoss: bad arguments fail early with errors that name them."""
import pytest
import torch

from spoco import SPOCOLoss

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def inputs():
    f = torch.randn(2, 4, 6, 7)
    t = torch.randint(0, 4, (2, 6, 7))
    return f, t, f + 0.1


@pytest.mark.parametrize("make,exc,match", [
    (lambda f, t, g: (f, t[:, :5], None), ValueError, r"target must have shape \(B, \*spatial\) = \(2, 6, 7\)"),
    (lambda f, t, g: (f, t[:1], None), ValueError, "target must have shape"),
    (lambda f, t, g: (f, t.float(), None), TypeError, "target must be an integer tensor"),
    (lambda f, t, g: (f, t.bool(), None), TypeError, "target must be an integer tensor"),
    (lambda f, t, g: (f, t.numpy(), None), TypeError, "target must be a torch.Tensor"),
    (lambda f, t, g: (f[0], t[0], None), ValueError, r"f must have shape \(B, D, H, W\)"),
    (lambda f, t, g: (f.long(), t, None), TypeError, "f must be a floating point tensor"),
    (lambda f, t, g: (f[:0], t[:0], None), ValueError, "empty batch"),
    (lambda f, t, g: (f.masked_fill(f > 1, float("nan")), t, None), ValueError, "f contains NaN or infinite"),
    (lambda f, t, g: (f.masked_fill(f > 1, float("inf")), t, None), ValueError, "f contains NaN or infinite"),
    (lambda f, t, g: (f, t - 3, None), ValueError, "target contains negative labels"),
])
@pytest.mark.parametrize("backend", ["fused", "torch", "reference"])
def test_dense_input_errors(inputs, make, exc, match, backend):
    f, t, g = make(*inputs)
    with pytest.raises(exc, match=match):
        SPOCOLoss(backend=backend)(f, t, g)


@pytest.mark.parametrize("make,exc,match", [
    (lambda f, t, g: (f, t, g[:, :3]), ValueError, "g has D = 3 embedding channels but f has D = 4"),
    (lambda f, t, g: (f, t, g[..., :5]), ValueError, r"g must have the same shape as f \(2, 4, 6, 7\)"),
    (lambda f, t, g: (f, t, g[:1]), ValueError, "g must have the same shape as f"),
    (lambda f, t, g: (f, t, g.long()), TypeError, "g must be a floating point tensor"),
    (lambda f, t, g: (f, t, g.masked_fill(g > 1, float("nan"))), ValueError, "g contains NaN or infinite"),
    (lambda f, t, g: (f, t, None), ValueError, "g is required in sparse mode"),
])
@pytest.mark.parametrize("backend", ["fused", "torch", "reference"])
def test_sparse_input_errors(inputs, make, exc, match, backend):
    f, t, g = make(*inputs)
    with pytest.raises(exc, match=match):
        SPOCOLoss(sparse=True, backend=backend)(f, t, g)


def test_g_in_dense_mode_and_optional_consistency(inputs):
    f, t, g = inputs
    with pytest.raises(ValueError, match="g is only used by the consistency term of the sparse mode"):
        SPOCOLoss()(f, t, g)
    SPOCOLoss(sparse=True, consistency_weight=0)(f, t)  # the ablation without L_U.con needs no g


@pytest.mark.parametrize("kw,match", [
    (dict(delta_v=0), "delta_v must be a finite number in"),
    (dict(delta_d=-1.0), "delta_d must be"),
    (dict(delta_v=float("nan")), "delta_v must be"),
    (dict(kernel_threshold=1.0), "kernel_threshold must be a finite number in"),
    (dict(kernel_threshold=0), "kernel_threshold"),
    (dict(pull_weight=-0.1), "pull_weight"),
    (dict(consistency_weight=float("inf")), "consistency_weight"),
    (dict(max_anchors=0), "max_anchors must be a positive integer"),
    (dict(max_anchors=2.5), "max_anchors"),
    (dict(coverage_stop=1.0), "coverage_stop"),
    (dict(anchor="median"), "anchor must be one of"),
    (dict(instance_loss="focal"), "instance_loss must be one of"),
    (dict(dice="mean"), "dice must be one of"),
    (dict(backend="numpy"), "backend must be one of"),
])
def test_constructor_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        SPOCOLoss(**kw)


def test_constructor_type_errors():
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        SPOCOLoss(ignore_index=0.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        SPOCOLoss(generator=3)


def test_half_precision_is_computed_in_float32(inputs):
    f, t, _ = inputs
    ref = SPOCOLoss(anchor="mean")(f.half().float(), t)
    out = SPOCOLoss(anchor="mean")(f.half(), t)
    assert out.dtype == torch.float32 and torch.allclose(out, ref)
