"""Tiled prediction agrees with whole-image prediction."""
import h5py
import numpy as np
import pytest
import torch

from spoco.models import UNet2D, UNet3D
from spoco.predict import predict, select_device, tile_grid


def _net(cls, seed, **kw):
    """A random network in eval mode whose output depends on the image.

    About one draw in 300 of these small networks (4 feature maps) switches off every ReLU of
    some layer and predicts a constant, which no tiling test can tell from the truth; such draws
    are replaced by the next seed (deterministically, so the test's seed still replays it).
    """
    probe = torch.from_numpy(np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32))
    for attempt in range(10):
        torch.manual_seed((seed + attempt) % 2**63)
        net = cls(1, 4, f_maps=4, **kw)
        # Non-trivial BatchNorm statistics so eval mode is not an identity.
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.02, 0.02)  # larger shifts can switch off every ReLU of a layer
                m.running_var.uniform_(0.5, 2.0)
        net.eval()
        with torch.no_grad():
            if float(net(probe).std(dim=(2, 3)).min()) > 1e-4:
                return net
    raise AssertionError(f"no image-dependent network in 10 draws from seed {seed}")


def test_tiles_cover_image_once():
    spatial, core, halo = (37, 50), (16, 24), (8, 8)
    count = np.zeros(spatial, int)
    for core_sl, win_sl in tile_grid(spatial, core, halo):
        count[core_sl] += 1
        for c, w in zip(core_sl, win_sl):
            assert w.start <= c.start and w.stop >= c.stop
    assert (count == 1).all()


@pytest.mark.parametrize("border", ["zero", "mirror"])
def test_tiled_equals_whole_with_large_halo_2d(rng, seed, border):
    net = _net(UNet2D, seed, depth=3)
    image = rng.random((70, 90)).astype(np.float32)
    whole = predict(net, image, halo=32, border=border, device="cpu")
    # Halo of 32 >= half the network's receptive field (depth 3, convs of the decoder included): exact.
    tiled = predict(net, image, tile_shape=(24, 40), halo=32, border=border, device="cpu")
    np.testing.assert_allclose(tiled, whole, atol=1e-5, err_msg=str(seed))


def test_small_halo_differs_only_near_tile_borders(rng, seed):
    net = _net(UNet2D, seed, depth=3)
    image = rng.random((64, 64)).astype(np.float32)
    whole = predict(net, image, device="cpu")
    tiled = predict(net, image, tile_shape=32, halo=4, device="cpu")
    diff = np.abs(tiled - whole).max(axis=0)
    scale = np.abs(whole).max()
    # Far from the tile seam at 32, context is complete; near it, the error stays bounded.
    far = np.ones_like(diff, bool)
    far[12:52, :] = far[:, 12:52] = False
    assert diff[far].max() < 1e-5 * scale + 1e-6
    assert diff.max() < 0.5 * scale
    # Without a halo the seam is not free: the comparison would notice a missing halo.
    no_halo = predict(net, image, tile_shape=32, halo=0, device="cpu")
    assert np.abs(no_halo - whole).max() > 1e-4 * scale


def test_3d_volume_into_hdf5_dataset(rng, seed, tmp_path):
    torch.manual_seed(seed % 2**63)
    net = UNet3D(1, 3, f_maps=4, depth=2, norm="none").eval()
    vol = rng.random((12, 20, 18)).astype(np.float32)
    whole = predict(net, vol, device="cpu")
    with h5py.File(tmp_path / "emb.h5", "w") as fh:
        raw = fh.create_dataset("raw", data=vol)
        out = fh.create_dataset("emb", shape=(3, 12, 20, 18), dtype="float32")
        predict(net, raw, tile_shape=(6, 8, 8), halo=8, device="cpu", out=out)
        np.testing.assert_allclose(out[...], whole, atol=1e-5)


@pytest.mark.parametrize("halo", [0, 5, 16])
def test_mirror_border_is_the_mirrored_image_and_zero_the_plain_one(rng, seed, halo):
    net = _net(UNet2D, seed, depth=2)
    image = rng.random((1, 30, 37)).astype(np.float32)
    mirror = predict(net, image, halo=halo, border="mirror", device="cpu", norm_range=(0.0, 1.0))
    zero = predict(net, image, halo=halo, device="cpu", norm_range=(0.0, 1.0))
    padded = np.pad(image, [(0, 0), (halo, halo), (halo, halo)], mode="reflect")
    with torch.no_grad():
        direct = net(torch.from_numpy(padded)[None])[0].numpy()[:, halo:halo + 30, halo:halo + 37]
        plain = net(torch.from_numpy(image)[None])[0].numpy()
    np.testing.assert_allclose(mirror, direct, atol=1e-5, err_msg=str(seed))
    np.testing.assert_allclose(zero, plain, atol=1e-5, err_msg=str(seed))


def test_multichannel_input(rng, seed):
    torch.manual_seed(seed % 2**63)
    net = UNet2D(3, 2, f_maps=4, depth=2).eval()
    assert predict(net, rng.random((3, 20, 21)).astype(np.float32), device="cpu").shape == (2, 20, 21)


def test_errors(rng):
    net = UNet2D(1, 2, f_maps=4, depth=2)
    with pytest.raises(ValueError, match="spatial axes"):
        predict(net, np.zeros((2, 3, 4, 5), np.float32), device="cpu")
    with pytest.raises(ValueError, match="tile_shape"):
        predict(net, np.zeros((8, 8), np.float32), tile_shape=(4, 4, 4), device="cpu")
    with pytest.raises(ValueError, match="halo"):
        predict(net, np.zeros((8, 8), np.float32), tile_shape=4, halo=-1, device="cpu")
    with pytest.raises(ValueError, match="border must be one of"):
        predict(net, np.zeros((8, 8), np.float32), border="reflect", device="cpu")


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device(None).type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def _dask_case(rng, seed, tmp_path):
    import zarr

    net = _net(UNet2D, seed, depth=2)
    image = rng.random((1, 70, 90)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    src = group.create_array("raw", data=image, chunks=(1, 32, 32))
    out = group.create_array("emb", shape=(4, 70, 90), dtype="float32", chunks=(4, 16, 16))
    serial = predict(net, image, tile_shape=32, halo=8, device="cpu")
    return net, src, out, serial


def test_dask_tiles_on_threads_equal_the_serial_prediction(rng, seed, tmp_path):
    import dask

    net, src, out, serial = _dask_case(rng, seed, tmp_path)
    with dask.config.set(scheduler="threads"):
        predict(net, src, tile_shape=32, halo=8, device="cpu", out=out, dask=True)
    np.testing.assert_array_equal(out[...], serial)
    import zarr

    straddling = zarr.open_group(str(tmp_path / "p.zarr"), mode="a").create_array(  # chunks across cores
        "bad", shape=(4, 70, 90), dtype="float32", chunks=(4, 24, 24))
    with pytest.raises(ValueError, match="must tile the cores"):
        predict(net, src, tile_shape=32, halo=8, device="cpu", out=straddling, dask=True)
    with pytest.raises(ValueError, match="zarr array"):
        predict(net, src, tile_shape=32, halo=8, device="cpu", out=np.zeros((4, 70, 90), np.float32), dask=True)


def test_dask_tiles_on_a_local_cluster_of_two_processes(rng, seed, tmp_path):
    distributed = pytest.importorskip("distributed")

    net, src, out, serial = _dask_case(rng, seed, tmp_path)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        predict(net, src, tile_shape=32, halo=8, device="cpu", out=out, dask=True)
    # the same float32 operations in other processes (one thread per worker): equal bit for bit
    print("max |cluster - serial|:", float(np.abs(out[...] - serial).max()))
    np.testing.assert_array_equal(out[...], serial)


def test_cli_dask_threads_equals_serial(rng, seed, tmp_path):
    import tifffile
    import zarr

    from spoco.cli import main
    from tests._helpers.data import tiny_checkpoint

    tiny_checkpoint(tmp_path / "m.pt", seed % 2**63)
    tifffile.imwrite(tmp_path / "img.tif", rng.integers(0, 3000, (70, 90), dtype=np.uint16))
    common = ["predict", "--model", str(tmp_path / "m.pt"), "--images", str(tmp_path / "img.tif"),
              "--tile-shape", "32", "--halo", "8", "--device", "cpu", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "serial.zarr")]) == 0
    assert main(common + ["--out", str(tmp_path / "dask.zarr"), "--dask", "threads"]) == 0
    read = lambda name: zarr.open_group(str(tmp_path / name), mode="r")["embeddings"][...]  # noqa: E731
    np.testing.assert_array_equal(read("dask.zarr"), read("serial.zarr"))
    assert main(common + ["--out", str(tmp_path / "dask.h5"), "--dask", "threads"]) == 2


# ---- test-time augmentation -----------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 5), (4, 7), (1, 6), (6, 1)])
def test_orient_points_follow_orient(shape):
    """Pixel p of an array lands at M p + t after orient, for all 8 orientations."""
    from spoco.predict import DIHEDRAL, orient, orient_points, unorient

    ys, xs = np.indices(shape)
    grid = torch.from_numpy(np.stack([ys, xs]))
    for k, flip in DIHEDRAL:
        moved = orient(grid, k, flip).numpy()  # (2, *turned): where each new pixel came from
        m, t = orient_points(shape, k, flip)
        assert np.allclose(m @ m.T, np.eye(2))
        p = np.stack([ys.ravel(), xs.ravel()])
        q = np.rint(m @ p + t[:, None]).astype(int)
        np.testing.assert_array_equal(moved[:, q[0], q[1]], p, err_msg=f"k={k} flip={flip}")
        np.testing.assert_array_equal(unorient(orient(grid, k, flip), k, flip).numpy(), grid.numpy())
    assert len(set(DIHEDRAL)) == 8


class _PointsAtBrightest(torch.nn.Module):
    """An exactly equivariant spatial-embedding network: every pixel's first ``ndim``
    channels point at the window's brightest pixel (so that with the coordinates added
    they equal its position / scale), then two pointwise channels and a pointwise
    foreground logit. Every orientation must therefore give the same embeddings."""

    def __init__(self, ndim, scale):
        super().__init__()
        self.ndim, self.spatial_scale, self.foreground = ndim, scale, True
        self.register_buffer("label_rate", torch.tensor(0.8))

    def forward(self, x):
        img = x[0, 0]
        centre = torch.unravel_index(img.argmax(), img.shape)
        grids = torch.meshgrid(*[torch.arange(n, dtype=x.dtype) for n in img.shape], indexing="ij")
        offsets = [(c.to(x.dtype) - g) / self.spatial_scale for c, g in zip(centre, grids)]
        return torch.stack([*offsets, img ** 2, torch.tanh(3 * img), 4 * img - 2])[None]


@pytest.mark.parametrize("shape", [(33, 33), (30, 41), (6, 20, 27)])
@pytest.mark.parametrize("tiles", [None, 16])
def test_tta_of_an_equivariant_network_equals_one_prediction(rng, seed, shape, tiles):
    """The coordinate channels are moved back as points (turns, flips, the window's place
    in the image): for a network that commutes with the orientations, the mean of the 8
    equals the plain prediction, whole or tiled."""
    net = _PointsAtBrightest(len(shape), scale=float(rng.uniform(2, 9)))
    image = rng.random(shape).astype(np.float32) * 0.5
    image[tuple(rng.integers(0, s) for s in shape)] = 1.0  # one brightest pixel
    plain = predict(net, image, tile_shape=tiles, halo=4, device="cpu")
    tta = predict(net, image, tile_shape=tiles, halo=4, device="cpu", tta=True)
    assert tta.shape == plain.shape == (len(shape) + 3,) + shape
    np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-5, err_msg=str(seed))


@pytest.mark.parametrize("shape", [(36, 52), (8, 24, 40)])
def test_tta_runs_a_unet_on_non_square_images(rng, seed, shape):
    torch.manual_seed(seed % 2**63)
    cls = UNet2D if len(shape) == 2 else UNet3D
    net = cls(1, 4, f_maps=4, depth=2, spatial_scale=5.0).eval()
    image = rng.random(shape).astype(np.float32)
    plain = predict(net, image, device="cpu")
    tta = predict(net, image, device="cpu", tta=True)
    assert tta.shape == plain.shape and np.isfinite(tta).all()
    assert not np.allclose(tta, plain)  # a random network is not equivariant: the mean differs
    with pytest.raises(TypeError, match="tta must be True or False"):
        predict(net, image, device="cpu", tta="yes")
