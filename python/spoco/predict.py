"""Tiled prediction of pixel embeddings for images and volumes of any size.

The image is cut into tiles; each tile is predicted with a ``halo`` of context on
every side and only its core is kept (the overlap-tile strategy of the original
U-Net): away from the image border every output pixel sees at least ``halo`` pixels
of context, so tiles agree with a whole-image prediction up to the network's
far-field influence. At the image border, ``border="zero"`` (the default) leaves the
network its convolutions' zero padding, as it saw at the edges of its training
patches; ``border="mirror"`` gives every window ``halo`` pixels of mirrored image
past the border (the original U-Net's practice), also when the whole image is one
tile. Which is better depends on the network: mirroring removed a strip of false
objects along the border of a network trained sparsely on crops of nuclei images
(the demo), and added false objects for networks trained on tissue or on whole
images (benchmarks/notebook.md). Tiles start at multiples of the network's pooling factor, which
keeps the U-Net's pooling grid aligned with the whole-image one. Each core is
written once, so ``out`` may be an HDF5/zarr dataset larger than memory.

Networks with GroupNorm (the 3D default) normalise over each tile, so their tiled
output depends on the tile size: use tiles at least as large as the training patches.
"""
from __future__ import annotations

import hashlib
import itertools

import numpy as np
import torch

from ._journal import Journal, flush_array, output_lock
from .data.normalize import normalize_image, percentile_range
from .models.outputs import add_coordinates, split_output


BORDERS = ("zero", "mirror")


def select_device(device: str | None = None) -> torch.device:
    """``device`` if given, else the first available of cuda, mps, cpu."""
    if device not in (None, "auto"):
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def tile_cores(model, spatial, tile_shape=None) -> tuple:
    """The core shape of the tiles :func:`predict` uses for ``tile_shape`` (the whole image
    without one): rounded up to the network's pooling factor, at most the (rounded) image."""
    spatial = tuple(int(s) for s in spatial)
    if tile_shape is None:
        return spatial
    divisor = int(getattr(model, "divisor", 1))
    core = _spatial_arg(tile_shape, "tile_shape", len(spatial))
    return tuple(min(_round_up(c, divisor), _round_up(s, divisor)) for c, s in zip(core, spatial))


def tile_grid(spatial, core, halo):
    """Yield ``(core_slices, window_slices)`` covering ``spatial``: cores of shape
    ``core`` (clipped at the end) and windows = core ± halo clipped to the image."""
    starts = [range(0, s, c) for s, c in zip(spatial, core)]
    for start in itertools.product(*starts):
        core_sl = tuple(slice(b, min(b + c, s)) for b, c, s in zip(start, core, spatial))
        win_sl = tuple(slice(max(c.start - h, 0), min(c.stop + h, s)) for c, h, s in zip(core_sl, halo, spatial))
        yield core_sl, win_sl


@torch.no_grad()
def predict(model: torch.nn.Module, image, *, tile_shape=None, halo=None, border: str = "zero", device=None,
            out=None, progress: bool = False, norm_range=None, journal=None, dask: bool = False,
            tta: bool = False) -> np.ndarray:
    """Embeddings ``(D, *spatial)`` float32 of one image; for a model with a foreground
    head ``(D + 1, *spatial)``, the last channel the foreground probability in [0, 1].
    Spatial embeddings (``model.spatial_scale``) include the image coordinates.

    Parameters
    ----------
    model : nn.Module
        Maps ``(1, C, *spatial)`` to ``(1, D, *spatial)``; put in eval mode here.
        A ``divisor`` attribute (the U-Net's pooling factor) aligns the tiles.
    image : array-like ``(C, *spatial)`` or ``(*spatial)`` with ``model.ndim`` spatial axes
        Raw intensities (numpy, memmap, h5py/zarr dataset); normalised per channel
        with :func:`spoco.data.normalize_image` (percentiles of the whole image,
        as in training).
    tile_shape : ints, optional
        Core of each tile. Default: the whole image in one tile.
    halo : ints, optional
        Context added on every side of a core (default: 16 per axis; rounded up to the
        pooling factor when tiling).
    border : {"zero", "mirror"}
        What lies past the image border: the convolutions' zero padding, or ``halo``
        pixels of the mirrored image (see the module docstring).
    out : array-like ``(D, *spatial)``, optional
        Written core by core (e.g. an HDF5/zarr dataset); returned.
    norm_range : (lo, hi), optional
        Intensity range for normalisation (default: percentiles of ``image``).
    journal : path, optional
        A folder recording every tile written into ``out`` (required then, e.g. a zarr
        array), so that a run killed at any point and started again with the same
        arguments and folder predicts only the tiles that were not finished; the output
        equals an uninterrupted run's. Deleted at the end; a folder of another job (other
        model weights, shapes or tiling) is refused. The caller keeps the input unchanged.
    dask : bool
        Run the tiles as Dask tasks on the active scheduler (threads, processes, or a
        ``distributed`` cluster, one GPU per worker: each worker uses ``device`` or its own
        best device). ``out`` must be a zarr array whose chunks tile the cores (all channels
        in one chunk); the model and ``image`` travel to the workers (use a zarr or numpy
        image). The result equals the single-process prediction.
    tta : bool
        Test-time augmentation: every window is predicted in the 8 orientations of its
        YX plane (:data:`DIHEDRAL`: 4 quarter turns, with and without a flip), each result
        turned back, and the 8 averaged (8 times the network's work). Spatial embeddings
        point at their object's position, so their coordinate channels are mapped back as
        positions. On the validation images of BBBC039 and ISBI-2012 the mean splits fewer
        objects than one prediction (benchmarks/notebook.md); ``spoco train`` chooses it on
        the validation images (``TrainConfig.tta``).
    """
    ndim = getattr(model, "ndim", None)
    if ndim is not None and image.ndim == ndim:
        image = image[None] if isinstance(image, np.ndarray) else _AddChannel(image)
    if ndim is not None and image.ndim != ndim + 1:
        raise ValueError(f"image must have shape (C, *spatial) or (*spatial) with {ndim} spatial axes, "
                         f"got shape {tuple(image.shape)}")
    in_channels = getattr(model, "config", {}).get("in_channels")
    if in_channels is not None and image.shape[0] != in_channels:
        what = (f"a {ndim}D network with {in_channels} input channel{'s' * (in_channels > 1)} takes "
                f"{'(*spatial) or ' * (in_channels == 1)}({in_channels}, *spatial)")
        hint = (f"; for a stack of {image.shape[0]} 2D slices, predict each slice (image[z]) or train a 3D network"
                if ndim == 2 and in_channels == 1 else "")
        raise ValueError(f"image of shape {tuple(image.shape)} does not fit: {what}{hint}")
    spatial = tuple(int(s) for s in image.shape[1:])
    if min(spatial) < 1:
        raise ValueError(f"image is empty (shape {tuple(image.shape)})")
    divisor = int(getattr(model, "divisor", 1))
    halo = _spatial_arg(16 if halo is None else halo, "halo", len(spatial), minimum=0)
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    if not isinstance(tta, (bool, np.bool_)):
        raise TypeError(f"tta must be True or False, got {tta!r}")
    tta = bool(tta)
    core = tile_cores(model, spatial, tile_shape)
    if tile_shape is not None:  # aligned tiles: halos in multiples of the pooling factor too
        halo = tuple(_round_up(h, divisor) for h in halo)
    lo, hi = norm_range if norm_range is not None else percentile_range(image)
    worker_device = device  # with dask: resolved on each worker
    device = select_device(device) if not isinstance(device, torch.device) else device
    model.eval()
    tiles = list(enumerate(tile_grid(spatial, core, halo)))
    if journal is not None:
        if out is None:
            raise ValueError("journal= needs out= (an array that outlives the run, e.g. zarr)")
        with output_lock(journal, f"the journal {journal}"):
            job = {"what": "predict", "format": 1, "image_shape": list(image.shape), "core": list(core),
                   "halo": list(halo), "border": border, "out_shape": list(out.shape),
                   "norm_range": [np.asarray(lo).tolist(), np.asarray(hi).tolist()], "weights": _weights_digest(model),
                   "tta": tta}
            log = Journal(journal, job)
            log.bind(out, "tiles")
            done = log.done("tiles")
            todo = [t for t in tiles if t[0] not in done]
            if dask:
                _predict_dask(model, image, todo, spatial, core, halo, border, lo, hi, worker_device, out, journal,
                              tta)
            else:
                _predict_tiles(model, image, todo, spatial, halo, border, lo, hi, device, out, progress, log, tta)
            log.remove()
        return out
    if dask:
        return _predict_dask(model, image, tiles, spatial, core, halo, border, lo, hi, worker_device, out, None,
                             tta)
    return _predict_tiles(model, image, tiles, spatial, halo, border, lo, hi, device, out, progress, None, tta)


def _predict_tiles(model, image, tiles, spatial, halo, border, lo, hi, device, out, progress, journal, tta):
    """Predict ``tiles`` (``(index, (core, window))``) into ``out``; record each in ``journal``."""
    if progress:
        from tqdm import tqdm
        tiles = tqdm(tiles, desc="predict", unit="tile")
    for index, (core_sl, win_sl) in tiles:
        emb = _predict_tile(model, image, core_sl, win_sl, spatial, halo, border, lo, hi, device, tta)
        if out is None:
            out = np.zeros((emb.shape[0],) + spatial, dtype=np.float32)
        out[(slice(None),) + core_sl] = emb
        if journal is not None:
            flush_array(out)
            journal.mark("tiles", index)
    return out


def _predict_tile(model, image, core_sl, win_sl, spatial, halo, border, lo, hi, device, tta) -> np.ndarray:
    """The embeddings ``(D[+1], *core)`` of one tile's core, predicted from its window."""
    window = normalize_image(image[(slice(None),) + win_sl], lo=lo, hi=hi)
    if not np.isfinite(window).all():  # else every embedding of the tile becomes NaN, silently
        raise ValueError(f"the image has NaN or infinite pixels (in the tile at {[c.start for c in core_sl]})")
    start = [c.start - w.start for c, w in zip(core_sl, win_sl)]  # of the core in the window
    if border == "mirror":  # the halo past the image border: the mirrored image
        outside = [(h - b, max(c.stop + h - s, 0)) for c, h, b, s in zip(core_sl, halo, start, spatial)]
        if any(a or b for a, b in outside):
            window = np.pad(window, [(0, 0)] + outside, mode="reflect")
        start = list(halo)
    origin = [c.start - b for c, b in zip(core_sl, start)]  # image coordinates of the window's first pixel
    emb = _embeddings(model, torch.from_numpy(window)[None].to(device), origin, tta)
    inner = tuple(slice(b, b + c.stop - c.start) for c, b in zip(core_sl, start))
    return emb[(slice(None),) + inner]


def _dask_tile(model, image, core_sl, win_sl, spatial, halo, border, lo, hi, device, out, journal, index, tta):
    """One Dask task: predict a tile on the worker's device, write its core into ``out``,
    record it in ``journal`` (a folder path, or None)."""
    if device is None:  # each worker uses its own best device (its GPU on a GPU cluster)
        device = select_device(None)
    model = model.to(device)
    model.eval()
    with torch.no_grad():
        out[(slice(None),) + core_sl] = _predict_tile(model, image, core_sl, win_sl, spatial, halo, border, lo, hi,
                                                      device, tta)
    if journal is not None:
        flush_array(out)
        Journal.reopen(journal).mark("tiles", index)


def _predict_dask(model, image, tiles, spatial, core, halo, border, lo, hi, device, out, journal, tta):
    """Run ``tiles`` as Dask tasks on the active scheduler (threads, processes, distributed), each
    writing its core into ``out``. Cores must cover whole chunks of ``out`` so that no two
    tasks write one chunk."""
    import dask

    chunks = getattr(out, "chunks", None)
    if chunks is None or not hasattr(out, "store"):
        raise ValueError("dask=True needs out= to be a zarr array (every task writes its tiles into it)")
    if chunks[0] != out.shape[0] or any(c % k and c < s for c, k, s in zip(core, chunks[1:], spatial)):
        raise ValueError(f"with dask=True the chunks of out {tuple(chunks)} must tile the cores of the tiles "
                         f"{tuple(core)} (all channels in one chunk; chunk sizes dividing the core): two tasks "
                         "would write one chunk")
    shared_model, shared_image = dask.delayed(model, pure=True), dask.delayed(image, pure=True)
    device = None if device is None else str(device)
    tasks = [dask.delayed(_dask_tile, pure=False)(shared_model, shared_image, core_sl, win_sl, spatial, halo, border,
                                                  lo, hi, device, out, journal, index, tta)
             for index, (core_sl, win_sl) in tiles]
    dask.compute(*tasks)
    return out


def _weights_digest(model) -> str:
    """A hash of the model's weights and buffers: a journal of one model's tiles refuses another's."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# The 8 orientations of the YX plane that test-time augmentation averages, as (quarter
# turns k, flip): flip X first (if flip), then turn by torch.rot90(., k, dims=(-2, -1)).
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def orient(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``x (..., Y, X)`` flipped along X if ``flip``, then turned ``k`` quarter turns."""
    return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))


def unorient(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`orient`."""
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def orient_points(shape, k: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Where :func:`orient` moves the pixel positions of a ``shape = (Y, X)`` array:
    ``(M, t)`` with ``p' = M @ p + t`` for ``p = (y, x)``; ``M`` is orthogonal."""
    h, w = (int(s) for s in shape)
    m, t = np.eye(2), np.zeros(2)
    if flip:  # (y, x) -> (y, w - 1 - x)
        m, t = np.diag([1.0, -1.0]) @ m, np.array([t[0], w - 1 - t[1]])
    for _ in range(k):  # one quarter turn: (y, x) -> (w - 1 - x, y); the shape becomes (w, h)
        m, t = np.array([[0.0, -1.0], [1.0, 0.0]]) @ m, np.array([w - 1 - t[1], t[0]])
        h, w = w, h
    return m, t


def _embeddings(model, window: torch.Tensor, origin, tta: bool = False) -> np.ndarray:
    """The model's output for one window ``(1, C, *spatial)`` as ``(D[+1], *spatial)``:
    spatial embeddings get the image coordinates of their pixels added, and a
    foreground logit becomes the probability ``min(1, sigmoid(logit) / c)``. With
    ``tta``, the mean over the window's :data:`DIHEDRAL` orientations."""
    scale = getattr(model, "spatial_scale", None)
    if not tta:
        return _oriented_embeddings(model, window, scale, origin)[0].cpu().numpy()
    ndim = window.dim() - 2
    total = None
    for k, flip in DIHEDRAL:
        emb = _oriented_embeddings(model, orient(window, k, flip), scale, None)
        if scale is not None:
            # A spatial embedding is (about) its object's position / scale in the turned
            # window's pixels: move that point back, p = M^T (p' - t).
            m, t = orient_points(window.shape[-2:], k, flip)
            m = torch.as_tensor(m, dtype=emb.dtype, device=emb.device)
            t = torch.as_tensor(t / scale, dtype=emb.dtype, device=emb.device).view(1, 2, *([1] * ndim))
            emb[:, ndim - 2:ndim] = torch.einsum("ji,bj...->bi...", m, emb[:, ndim - 2:ndim] - t)
        emb = unorient(emb, k, flip)
        total = emb if total is None else total.add_(emb)
    emb = total.div_(len(DIHEDRAL))
    if scale is not None:  # where the window lies in the image
        shift = torch.as_tensor([o / scale for o in origin], dtype=emb.dtype, device=emb.device)
        emb[:, :ndim] += shift.view(1, ndim, *([1] * ndim))
    return emb[0].cpu().numpy()


def _oriented_embeddings(model, window: torch.Tensor, scale, origin) -> torch.Tensor:
    """``(1, D[+1], *spatial)`` float: embeddings with coordinates counted from ``origin``
    (None: the window's first pixel), the foreground probability last."""
    emb, logits = split_output(model(window), model)
    emb = add_coordinates(emb.float(), scale, origin)
    if logits is not None:
        prob = (torch.sigmoid(logits.float()) / model.label_rate.clamp_min(1e-6)).clamp(max=1.0)
        emb = torch.cat([emb, prob[:, None]], dim=1)
    return emb


class _AddChannel:
    """A lazy ``(1, *spatial)`` view of a lazy ``(*spatial)`` array (h5py/zarr)."""

    def __init__(self, array):
        self.array, self.shape, self.ndim = array, (1,) + tuple(array.shape), array.ndim + 1

    def __getitem__(self, index):
        return np.asarray(self.array[index[1:]])[None]


def _spatial_arg(value, name, ndim, minimum=1):
    values = tuple(value) if not np.isscalar(value) else (value,)
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or not all(isinstance(v, (int, np.integer)) and v >= minimum for v in values):
        raise ValueError(f"{name} must be {ndim} integers >= {minimum} (or one), got {value!r}")
    return tuple(int(v) for v in values)
