"""SPOCOLoss(backend="fused") == the loop reference (values and gradients, float64 and float32),
many instances, torch.compile(fullgraph=True), half precision, CUDA when available."""
import pytest
import torch

from spoco import SPOCOLoss

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TERMS = ("pull", "push", "reg", "instance", "unlabeled_push", "consistency", "total")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def run(f, t, g, seed=0, device="cpu", **kw):
    """(total, terms, grad of f) of one call; a seeded CPU generator gives the same keys on any device."""
    f = f.detach().clone().to(device).requires_grad_()
    g = None if g is None else g.to(device)
    total, terms = SPOCOLoss(**kw)(f, t.to(device), g, generator=torch.Generator().manual_seed(seed % 2**31),
                                   return_terms=True)
    total.backward()
    return total.detach().cpu(), {k: v.cpu() for k, v in terms.items()}, f.grad.cpu()


def assert_same(a, b, rtol, atol, msg=""):
    for k in TERMS:
        torch.testing.assert_close(a[1][k].to(b[1][k].dtype), b[1][k], rtol=rtol, atol=atol, msg=f"term {k} {msg}")
    scale = b[2].abs().max().item()
    torch.testing.assert_close(a[2].to(b[2].dtype), b[2], rtol=rtol, atol=atol * max(scale, 1e-12),
                               msg=f"gradient of f {msg}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("anchor", ["random", "mean"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_fused_equals_reference(batch, seed, device, sparse, anchor, ndim):
    spatial = (11, 12) if ndim == 2 else (5, 6, 7)
    for ignore, dice in [(0.0, "per_object"), (0.15, "pooled")]:
        # image 1 has no object, image 2 exactly one
        f, g, t = batch(seed % 2**31, B=4, spatial=spatial, D=3, n_objects=7, ignore=ignore, empty=(1,), single=(2,))
        g = g if sparse else None
        kw = dict(sparse=sparse, anchor=anchor, dice=dice)
        ref = run(f, t, g, seed, backend="reference", **kw)
        assert_same(run(f, t, g, seed, device, backend="fused", **kw), ref, 1e-9, 1e-11, f"seed {seed}")
        # float32 inputs against the float64 reference on the same values
        f32, g32 = f.float(), None if g is None else g.float()
        ref32 = run(f32.double(), t, None if g is None else g32.double(), seed, backend="reference", **kw)
        assert_same(run(f32, t, g32, seed, device, backend="fused", **kw), ref32, 1e-5, 1e-6, f"float32 seed {seed}")


@pytest.mark.parametrize("n_objects,n_seeds,spatial", [(1, 8, (12, 13)), (2, 8, (12, 13)), (50, 70, (30, 31)),
                                                      (1000, 2300, (80, 80))])
def test_many_instances(batch, seed, n_objects, n_seeds, spatial):
    # random_instances loses cells to background and to the warp: n_seeds seeds give about n_objects objects;
    # for 1 and 2 instances only the first n_objects objects of each image are kept
    f, g, t = batch(seed % 2**31, B=2 if n_objects < 1000 else 1, spatial=spatial, D=4, n_objects=n_seeds,
                    ignore=0.05)
    if n_objects <= 2:
        for b in range(t.shape[0]):
            ids = torch.unique(t[b][t[b] > 0])
            t[b][torch.isin(t[b], ids[n_objects:])] = 0
    n = len(torch.unique(t[0][t[0] > 0]))
    assert n == n_objects if n_objects <= 2 else n >= 0.7 * n_objects, n
    kw = dict(sparse=True, anchor="random")
    # the loop reference needs ~30 s for the 10^6 push pairs of 1000 objects: there the oracle is the
    # torch path (itself tested against the reference in test_losses_reference.py)
    ref = run(f, t, g, seed, backend="reference" if n_objects < 1000 else "torch", **kw)
    assert_same(run(f, t, g, seed, backend="fused", **kw), ref, 1e-9, 1e-11, f"seed {seed}")


def test_bce_instance_term_on_the_fused_path(batch, seed):
    f, g, t = batch(seed % 2**31, B=2, n_objects=6, ignore=0.1)
    kw = dict(sparse=True, instance_loss="bce")
    assert_same(run(f, t, g, seed, backend="fused", **kw), run(f, t, g, seed, backend="reference", **kw), 1e-9,
                1e-11)


def test_default_backend_is_fused():
    assert SPOCOLoss().backend == "auto"
    f = torch.randn(1, 2, 5, 6)
    t = torch.randint(0, 3, (1, 5, 6))
    assert float(SPOCOLoss()(f, t, generator=torch.Generator().manual_seed(1))) == \
        float(SPOCOLoss(backend="fused")(f, t, generator=torch.Generator().manual_seed(1)))


def test_torch_compile_fullgraph(batch, monkeypatch):
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(inductor_config, "fallback_random", True)  # torch.rand draws as in eager mode
    torch._dynamo.reset()
    f, g, t = batch(7, B=2, spatial=(10, 11), D=4, n_objects=6, ignore=0.05, dtype=torch.float32)
    loss = SPOCOLoss(sparse=True)

    def step(x, target, g):
        return loss(x, target, g)

    compiled = torch.compile(step, fullgraph=True)
    x = f.clone().requires_grad_()
    torch.manual_seed(3)
    out = compiled(x, t, g)
    out.backward()
    y = f.clone().requires_grad_()
    torch.manual_seed(3)
    ref = step(y, t, g)
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)


def test_half_precision_inputs(batch):
    f, g, t = batch(9, B=2, n_objects=5)
    for dtype in (torch.float16, torch.bfloat16):
        fh, gh = f.to(dtype), g.to(dtype)
        a = run(fh, t, gh, backend="fused", sparse=True)
        b = run(fh.double(), t, gh.double(), backend="reference", sparse=True)
        assert a[0].dtype == torch.float32 and a[2].dtype == dtype
        torch.testing.assert_close(a[0].double(), b[0], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_deterministic_loss_is_bit_identical(batch):
    f, g, t = batch(13, B=3, spatial=(40, 41), D=8, n_objects=30, ignore=0.05, dtype=torch.float32)
    torch.use_deterministic_algorithms(True)
    try:
        a, b = (run(f, t, g, 5, "cuda", sparse=True) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


def test_auto_uses_the_kernels_only_where_they_exist(monkeypatch):
    """A wheel has no spoco._cuda: "auto" must then give CUDA tensors the torch backend."""
    import spoco.loss.spoco_loss as module

    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    for built in (True, False):
        monkeypatch.setattr(module, "has_cuda_kernels", lambda: built)
        assert module.uses_fused_kernels("auto", cpu)
        assert module.uses_fused_kernels("auto", cuda) is built
        assert not module.uses_fused_kernels("auto", mps)
        assert module.uses_fused_kernels("fused", cuda) and not module.uses_fused_kernels("torch", cpu)
