#!/usr/bin/env python
"""Mutex watershed benchmark: spoco vs. mwatershed (Rust) vs. bioimage-cpp (C++).

All three libraries run the mutex watershed on the *same* weighted grid graph,
built from the same float32 affinities, single-threaded. Run ``--quick`` to test
the script (small sizes, a few seconds), the default for the full sizes::

    python benchmarks/bench_mws.py --quick
    python benchmarks/bench_mws.py --cases a,b --repeats 5

Cases
-----
(a) 2D 1024x1024, ``default_offsets(2)``: 8 channels, attractive -1 along each
    axis, repulsive -3, -9, -27 along each axis.
(b) 3D 64x256x256, ``default_offsets(3)``: 12 channels likewise.
(c) (b) with repulsive strides (1, 4, 4) (regular, not randomized).
(d) end-to-end from 16-D embeddings (2D 1024^2 and 3D 64x256^2), the weight
    computation included: ours = ``mutex_watershed_embeddings`` (Eq. 12 per edge on
    the fly); peers = numpy Eq. 12 affinities (float32, bitwise equal to
    ``spoco.clustering.embedding_affinities``; ``--peer-affinities spoco`` uses
    that function with ``threads=1`` instead) + conversion + the peer's MWS.
``--quick`` shrinks the grids to 2D 128^2 and 3D 32x64x64 (every axis must be
longer than the largest offset, 27, or mwatershed panics).

Data: ``spoco.data.synthetic.random_instances`` (warped Voronoi instances, 30 %
background) -> ``synthetic_embeddings`` (16-D, delta_d = 2) -> float32
affinities by ``spoco.clustering.embedding_affinities``. The values are
continuous, except that Eq. 12 saturates: attractive weights are exactly 0.0 and
repulsive ones exactly 1.0 once two embeddings are >= 2 delta_d apart (the table
notes print the fractions), and float32 values close to 1.0 collide by chance.
So the data has ties; see "Partition check" for how they are handled.

Conventions: how our weights are handed to each peer
---------------------------------------------------
spoco (reference): ``affinities[c, p]`` weighs the edge (p, p + offsets[c]) when
p + offsets[c] is inside the grid; the first ``n_attractive`` channels are
attractive (high = merge), the others repulsive (high = split); priority = the
value itself; edges are processed by priority descending, ties by edge id
``c * N + p`` ascending.

bioimage-cpp 0.10.0, ``bioimage_cpp.segmentation.mutex_watershed(affinities,
offsets, number_of_attractive_channels, strides=...)``: *identical* convention,
so the float32 array, the offsets and ``n_attractive`` are passed unchanged (no
copy, no conversion). Same edge direction (p, p + o), same priority order, and
-- verified by ``--selftest`` on inputs with heavy ties and on mixed-sign
offsets -- the same tie order (partitions equal ours bit for bit even with
ties). Its Python wrapper allocates a uint8 ``valid_edges`` mask of shape
(C, *spatial) per call (counted in its working memory). Strides: it keeps the
repulsive edges whose *source* pixel p has every coordinate a multiple of the
stride (``valid[c, ::s0, ::s1, ...]``) -- exactly ours. Returns uint64 labels.
Single-threaded (no thread pool in its MWS; cpu/wall column).

mwatershed 0.5.4, ``mwatershed.agglom(affinities, offsets, strides=...)``: no
attractive/repulsive channel split; the *sign* of each weight decides (w > 0:
attractive, w < 0: repulsive; an edge of weight exactly 0.0 is observed never to
merge) and edges are processed by |w| descending. The affinity at p also weighs the edge
(p, p + o) (verified). It only accepts float64 and offsets as a list of lists.
Conversion (done once, outside the timed call, its time shown as "convert s"):
``w = float64(a) + 2**-160`` then ``w[n_attractive:] *= -1``. The tiny shift
keeps attractive edges of priority exactly 0.0 (saturated Eq. 12 weights: a few
% of the attractive edges here, see the table notes) attractive as in ours, and it is strictly
order-preserving for float32 inputs (2**-160 is below half the gap between any
two float32 values, and exactly 0 -> 2**-160 > 0), so |w| orders the edges
exactly as our priorities and the sign gives the edge type. Differences:

* tie order: equal |w| are not processed in our edge-id order (nor in any simple
  channel/pixel lexicographic order we tried); on exact ties its partition can
  therefore differ slightly. On tie-free weights it is identical to ours
  (``--selftest``, and the rank check below).
* strides are per channel (list of lists: ``[1]*ndim`` for attractive channels)
  and are applied to the channel's *valid region*: it keeps edge (p, p + o) iff
  (p_k - max(0, -o_k)) % s_k == 0 for every axis k. For our negative offsets
  that is "the *target* pixel p + o is on the stride grid", whereas ours and
  bioimage-cpp keep "the *source* pixel p is on the stride grid": a different
  subset of the repulsive edges (same density). Case (c) therefore runs
  mwatershed with its own strides; the direct partition check is "n/a", and we
  instead check it against ours on mwatershed's edge subset (ours without
  strides, with the repulsive weights that mwatershed drops set to 0: a
  repulsive edge of priority 0 comes after every attractive edge, so it has no
  effect).
* output: uint64 labels; pixels that no positive weight touches come back
  labelled 0 (observed; with the +2**-160 shift every pixel has a positive
  attractive edge on our grids, and the comparison treats 0-pixels as
  singletons anyway).
* it panics ("assertion failed: start <= axis_len") when an offset is not
  shorter than the axis; single-threaded (no rayon in the binary).

Partition check
---------------
Partitions are compared up to relabelling: "identical" when the label pairs form
a bijection (contingency table with exactly one nonzero per row and column),
else the adapted Rand error (1 - F-score of pixel-pair precision/recall, all
pixels, no ignore label). When a peer's timed output differs from ours, the
script re-runs that peer on *rank-mapped* weights: every edge gets a distinct
float64 priority in our order (priority descending, edge id ascending; computed
with a stable argsort of the float32 values), i.e. the same weighted graph with
ties broken our way -- no random jitter. "identical with our tie order" then
means the difference is tie order only.

Timing and memory
-----------------
Each (case, library) runs in its own subprocess with RAYON_NUM_THREADS =
OMP_NUM_THREADS = 1 set before any import, ``threads=1`` for ours. The input is
loaded from .npy and converted to the peer's format first; a tiny input is
segmented once to page in code and lazy initialisations. Then the peak-RSS
counter is reset (``/proc/self/clear_refs`` = 5) and a warm-up run measures the
peak working memory = VmHWM - VmRSS before the call: every native and Python
allocation the call touches (including its output labels), excluding the
input array handed to it ("input MiB", float64 for mwatershed). For case (d)
the input is the embeddings, so the affinity arrays of the peers are working
memory. If clear_refs is not writable, getrusage(RUSAGE_SELF).ru_maxrss is used
instead (peak over the process, so it cannot be lower than the input load).
Bytes/edge = working memory / the number of edges that library processes.
Then ``--repeats`` timed runs (``time.perf_counter``); the table shows the
median, and cpu/wall = process CPU time / wall time over those runs (~1 for a
single thread; < 1 when the machine is busy).
"""
from __future__ import annotations

import os

for _v in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
           "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

LIBS = ("ours", "bioimage-cpp", "mwatershed")
#: Speed-up over the faster peer at one thread that the project aims for on cases (a) and (b).
TARGET_FACTOR = 10.0
EPS_MWS = 2.0 ** -160
DELTA_D = 2.0
EMB_DIM = 16

FULL_2D = (1024, 1024)
FULL_3D = (64, 256, 256)
QUICK_2D = (128, 128)
QUICK_3D = (32, 64, 64)
STRIDES_C = (1, 4, 4)


# ----------------------------------------------------------------------------------------------
# Conversions and helpers shared by the parent and the workers
# ----------------------------------------------------------------------------------------------

def default_offsets(ndim):
    from spoco.clustering import default_offsets as _d
    off, na = _d(ndim)
    return np.asarray(off, dtype=np.int64), int(na)


def to_mwatershed(aff, n_attractive):
    """float32 priorities -> mwatershed's signed float64 weights (see module docstring)."""
    w = aff.astype(np.float64)
    w += EPS_MWS
    w[n_attractive:] *= -1.0
    return w


def mwatershed_strides(strides, n_channels, n_attractive, ndim):
    if strides is None:
        return None
    return [[1] * ndim] * n_attractive + [[int(s) for s in strides]] * (n_channels - n_attractive)


def _src_slices(shape, o):
    """Slices of the source pixels p whose neighbour p + o is inside the grid (None if empty)."""
    sl = []
    for s, k in zip(shape, o):
        lo, hi = max(0, -int(k)), int(s) - max(0, int(k))
        if hi <= lo:
            return None
        sl.append(slice(lo, hi))
    return tuple(sl)


def count_edges(shape, offsets, n_attractive, strides=None, phase="grid"):
    """Edges inside the grid; with strides, repulsive edges kept on the stride grid of the
    source pixel (phase "grid": ours, bioimage-cpp) or of the valid region (phase "valid":
    mwatershed)."""
    total = 0
    for c, o in enumerate(offsets):
        sl = _src_slices(shape, o)
        if sl is None:
            continue
        n = 1
        for k, s in enumerate(sl):
            if strides is None or c < n_attractive:
                n *= s.stop - s.start
            elif phase == "grid":
                n *= len(range(-(-s.start // strides[k]) * strides[k], s.stop, strides[k]))
            else:
                n *= len(range(s.start, s.stop, strides[k]))
        total += n
    return total


def eq12_affinities_numpy(emb, offsets, n_attractive, delta_d=DELTA_D):
    """Eq. 12 affinities in plain numpy, float32 throughout (bitwise equal to
    spoco.clustering.embedding_affinities): attractive 1 - w, repulsive w,
    w = 1 - max((2 delta_d - |e_i - e_j|) / (2 delta_d), 0)^2, 0 outside the grid."""
    spatial = emb.shape[1:]
    out = np.zeros((len(offsets),) + spatial, dtype=np.float32)
    two_d = np.float32(2 * delta_d)
    for c, o in enumerate(offsets):
        src = _src_slices(spatial, o)
        if src is None:
            continue
        dst = tuple(slice(s.start + int(k), s.stop + int(k)) for s, k in zip(src, o))
        acc = np.zeros(out[c][src].shape, dtype=np.float32)
        for k in range(emb.shape[0]):
            d = emb[k][src] - emb[k][dst]
            d *= d
            acc += d
        np.sqrt(acc, out=acc)
        t = (two_d - acc) / two_d
        np.maximum(t, 0, out=t)
        t *= t
        out[c][src] = t if c < n_attractive else 1 - t
    return out


def mwatershed_kept_mask(shape, offsets, n_attractive, strides):
    """Boolean (C, *shape): edges mwatershed keeps with its per-channel strides."""
    keep = np.zeros((len(offsets),) + tuple(shape), dtype=bool)
    for c, o in enumerate(offsets):
        sl = _src_slices(shape, o)
        if sl is None:
            continue
        if c >= n_attractive:
            sl = tuple(slice(s.start, s.stop, st) for s, st in zip(sl, strides))
        keep[(c,) + sl] = True
    return keep


def rank_priorities(aff):
    """Distinct float64 priorities in (0, 1] ordering the edges exactly as ours does:
    priority descending, ties by edge id (channel * N + pixel) ascending."""
    flat = aff.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    r = np.empty(flat.size, dtype=np.float64)
    r[order] = np.arange(flat.size, 0, -1, dtype=np.float64) / flat.size
    return r.reshape(aff.shape)


def zeros_to_singletons(labels):
    a = np.asarray(labels).astype(np.int64).ravel()
    z = a == 0
    if z.any():
        a = a.copy()
        a[z] = a.max() + 1 + np.arange(int(z.sum()))
    return a


def compare_partitions(ref, other):
    """(identical, adapted Rand error) of two label arrays, up to relabelling; label 0 in
    either is treated as singletons (mwatershed's unlabelled pixels)."""
    a, b = zeros_to_singletons(ref), zeros_to_singletons(other)
    if a.shape != b.shape:
        raise ValueError("label arrays differ in size")
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    _, counts = np.unique(a.astype(np.int64) * nb + b, return_counts=True)
    identical = len(counts) == na == nb
    n = a.size
    ca = np.bincount(a).astype(np.float64)
    cb = np.bincount(b).astype(np.float64)
    s_ab = float((counts.astype(np.float64) ** 2).sum())
    s_a, s_b = float((ca ** 2).sum()), float((cb ** 2).sum())
    precision, recall = s_ab / s_b, s_ab / s_a
    f = 2 * precision * recall / (precision + recall) if n else 1.0
    return identical, (0.0 if identical else 1.0 - f)


# ----------------------------------------------------------------------------------------------
# Library adapters: run(input) for "aff" (affinities) or "emb" (embeddings) inputs
# ----------------------------------------------------------------------------------------------

def make_runner(lib, mode, offsets, n_attractive, strides, peer_affinities):
    """Returns (prepare, run): prepare(x) converts the loaded float32 input to what the
    timed call gets (untimed); run(prepared) -> labels (timed)."""
    ndim = offsets.shape[1]
    C = len(offsets)
    off_list = offsets.tolist()

    if lib == "ours":
        from spoco.clustering import mutex_watershed, mutex_watershed_embeddings
        if mode == "aff":
            return (lambda x: x), (lambda a: mutex_watershed(a, offsets, n_attractive, strides=strides,
                                                               threads=1))
        return (lambda x: x), (lambda e: mutex_watershed_embeddings(e, offsets, n_attractive, delta_d=DELTA_D,
                                                                      strides=strides, threads=1))

    if mode == "emb":
        if peer_affinities == "spoco":
            from spoco.clustering import embedding_affinities

            def affinities(e):
                return embedding_affinities(e, offsets, n_attractive, delta_d=DELTA_D, threads=1)
        else:
            def affinities(e):
                return eq12_affinities_numpy(e, offsets, n_attractive, DELTA_D)

    if lib == "bioimage-cpp":
        from bioimage_cpp.segmentation import mutex_watershed as bio_mws
        st = None if strides is None else tuple(int(s) for s in strides)

        def bio(a):
            return bio_mws(a, off_list, n_attractive, strides=st)
        if mode == "aff":
            return (lambda x: x), bio
        return (lambda x: x), (lambda e: bio(affinities(e)))

    if lib == "mwatershed":
        import mwatershed
        mst = mwatershed_strides(strides, C, n_attractive, ndim)

        def mws(w):
            return mwatershed.agglom(w, off_list, strides=mst)
        if mode == "aff":
            return (lambda x: to_mwatershed(x, n_attractive)), mws

        def e2e(e):
            a = affinities(e)
            w = to_mwatershed(a, n_attractive)
            del a
            return mws(w)
        return (lambda x: x), e2e
    raise ValueError(f"unknown library {lib!r}")


# ----------------------------------------------------------------------------------------------
# Worker (one library, one case, own process)
# ----------------------------------------------------------------------------------------------

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(spec):
    import resource
    lib, mode = spec["lib"], spec["mode"]
    offsets = np.asarray(spec["offsets"], dtype=np.int64)
    na = int(spec["n_attractive"])
    strides = None if spec["strides"] is None else tuple(spec["strides"])
    prepare, run = make_runner(lib, mode, offsets, na, strides, spec["peer_affinities"])

    # Page in code and lazy initialisation on a tiny input (each axis 32 > the largest offset).
    ndim = offsets.shape[1]
    rng = np.random.default_rng(0)
    lead = EMB_DIM if mode == "emb" else len(offsets)
    tiny = rng.random((lead,) + (32,) * ndim).astype(np.float32)
    run(prepare(tiny))
    del tiny

    x = np.load(spec["input"])
    t0 = time.perf_counter()
    prepared = prepare(x)
    convert_s = time.perf_counter() - t0
    input_bytes = int(prepared.nbytes)
    del x
    gc.collect()

    precise = _reset_peak()
    base_kb = _status_kb("VmRSS")
    labels = run(prepared)
    if precise:
        peak_kb = _status_kb("VmHWM")
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    work_bytes = max(0, peak_kb - base_kb) * 1024
    np.save(spec["labels_out"], np.asarray(labels))
    del labels
    gc.collect()

    times, cpus = [], []
    for _ in range(int(spec["repeats"])):
        c0, t0 = time.process_time(), time.perf_counter()
        labels = run(prepared)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        del labels
    res = dict(lib=lib, times=times, median_s=statistics.median(times) if times else float("nan"),
               cpu_over_wall=(sum(cpus) / sum(times)) if times else float("nan"), work_bytes=work_bytes,
               input_bytes=input_bytes, convert_s=convert_s,
               memory_method="clear_refs+VmHWM" if precise else "ru_maxrss")
    print("RESULT " + json.dumps(res), flush=True)


def run_worker(spec, verbose=False):
    env = dict(os.environ)
    for v in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMEXPR_NUM_THREADS"):
        env[v] = "1"
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or "").splitlines()[-15:])
        return None, f"worker failed (rc={proc.returncode}): {tail}"
    if verbose and proc.stderr.strip():
        print(proc.stderr, file=sys.stderr)
    return json.loads(lines[-1][len("RESULT "):]), None


# ----------------------------------------------------------------------------------------------
# Convention self-test (small random inputs, in-process)
# ----------------------------------------------------------------------------------------------

def selftest(seed=0):
    """Small random grids: continuous (no ties), heavily tied, mixed-sign offsets, strides.
    Returns lines of text; raises nothing (reports mismatches)."""
    import bioimage_cpp.segmentation as bs
    import mwatershed
    from spoco.clustering import mutex_watershed
    rng = np.random.default_rng(seed)
    tally = {k: [0, 0] for k in ("continuous: bioimage-cpp", "continuous: mwatershed",
                                 "ties: bioimage-cpp", "ties: mwatershed raw", "ties: mwatershed rank-mapped",
                                 "strides: bioimage-cpp", "strides: mwatershed on its edge set")}

    def tick(key, ok):
        tally[key][0] += bool(ok)
        tally[key][1] += 1

    configs = []
    for ndim, shape in ((2, (20, 23)), (3, (7, 9, 11))):
        o, na = np.concatenate([-np.eye(ndim, dtype=np.int64)] +
                               [-r * np.eye(ndim, dtype=np.int64) for r in (2, 3, 5)]), ndim
        configs.append((shape, o, na))
    configs.append(((14, 17), np.array([[1, 0], [0, -1], [-3, 2], [2, 3], [0, 4], [-4, -1]]), 2))
    for shape, off, na in configs:
        ndim = len(shape)
        ol = off.tolist()
        for _ in range(8):
            cont = rng.random((len(off),) + shape).astype(np.float32)
            ours = mutex_watershed(cont, off, na)
            tick("continuous: bioimage-cpp", compare_partitions(ours, bs.mutex_watershed(cont, ol, na))[0])
            tick("continuous: mwatershed",
                 compare_partitions(ours, mwatershed.agglom(to_mwatershed(cont, na), ol))[0])
            tied = (rng.integers(0, 5, (len(off),) + shape) / 4).astype(np.float32)   # incl. 0.0 and 1.0
            ours = mutex_watershed(tied, off, na)
            tick("ties: bioimage-cpp", compare_partitions(ours, bs.mutex_watershed(tied, ol, na))[0])
            tick("ties: mwatershed raw", compare_partitions(ours, mwatershed.agglom(to_mwatershed(tied, na), ol))[0])
            rk = rank_priorities(tied)
            rk[na:] *= -1
            tick("ties: mwatershed rank-mapped", compare_partitions(ours, mwatershed.agglom(rk, ol))[0])
            st = tuple(int(s) for s in rng.integers(1, 4, ndim))
            ours = mutex_watershed(tied, off, na, strides=st)
            tick("strides: bioimage-cpp", compare_partitions(ours, bs.mutex_watershed(tied, ol, na, strides=st))[0])
            keep = mwatershed_kept_mask(shape, off, na, st)
            emul = np.where(keep, tied, 0).astype(np.float32)
            emul[:na] = tied[:na]
            ours_e = mutex_watershed(emul, off, na)
            rk = rank_priorities(emul)
            rk[na:] *= -1
            mst = mwatershed_strides(st, len(off), na, ndim)
            tick("strides: mwatershed on its edge set",
                 compare_partitions(ours_e, mwatershed.agglom(rk, ol, strides=mst))[0])
    out = []
    for k, (ok, n) in tally.items():
        note = ""
        if k == "ties: mwatershed raw":
            note = "  (informative: mwatershed breaks ties in another order)"
        out.append(f"  {k:40s} {ok:3d}/{n} identical to ours{note}")
    return out


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------

def machine_header():
    import importlib.metadata as md
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        avail = len(os.sched_getaffinity(0))
    except AttributeError:
        avail = os.cpu_count()
    vers = {}
    for d in ("spoco", "mwatershed", "bioimage-cpp", "numpy"):
        try:
            vers[d] = md.version(d)
        except md.PackageNotFoundError:
            vers[d] = "not installed"
    commit = "?"
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    lines = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}; {os.cpu_count()} logical cores ({avail} usable); load average "
        f"{', '.join(f'{x:.2f}' for x in load)} at start",
        f"- {platform.python_implementation()} {platform.python_version()} on {platform.system()} "
        f"{platform.release()}",
        f"- spoco {vers['spoco']} (git {commit}), mwatershed {vers['mwatershed']}, bioimage-cpp "
        f"{vers['bioimage-cpp']}, numpy {vers['numpy']}",
        "- one thread each: threads=1 for spoco; RAYON_NUM_THREADS=OMP_NUM_THREADS=1 for all",
    ]
    return lines


def make_embeddings(shape, seed):
    from spoco.data.synthetic import random_instances, synthetic_embeddings
    n = int(np.prod(shape))
    n_objects = int(np.clip(n // 8000, 12, 300))
    labels = random_instances(shape, n_objects, rng=seed)
    return synthetic_embeddings(labels, EMB_DIM, delta_d=DELTA_D, rng=seed + 1)


def saturation_note(aff, offsets, na):
    z = o = va = vr = 0
    for c, off in enumerate(offsets):
        sl = _src_slices(aff.shape[1:], off)
        if sl is None:
            continue
        v = aff[c][sl]
        if c < na:
            z += int((v == 0).sum())
            va += v.size
        else:
            o += int((v == 1).sum())
            vr += v.size
    return (f"{100 * z / max(va, 1):.1f} % of attractive edges are exactly 0.0, "
            f"{100 * o / max(vr, 1):.1f} % of repulsive edges exactly 1.0 (Eq. 12 saturation)")


def fmt_mib(b):
    return f"{b / 2**20:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (2D 128^2, 3D 32x64x64), for testing")
    p.add_argument("--cases", default="a,b,c,d", help="comma-separated subset of a,b,c,d (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up (median; default 5)")
    p.add_argument("--libs", default=",".join(LIBS), help=f"subset of {','.join(LIBS)}")
    p.add_argument("--peer-affinities", choices=("numpy", "spoco"), default="numpy",
                   help="Eq. 12 weights for the peers in case (d): plain numpy (default) or "
                        "spoco.clustering.embedding_affinities(threads=1)")
    p.add_argument("--data-dir", default=None, help="cache generated inputs here (default: a temp dir, removed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check", action="store_true", help="skip the partition checks")
    p.add_argument("--selftest", action="store_true",
                   help="run the convention self-test (always run with --quick)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker is not None:
        worker(json.loads(args.worker))
        return 0

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = set(cases) - set("abcd")
    if bad:
        p.error(f"unknown cases {sorted(bad)}")
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    if "ours" not in libs:
        libs.insert(0, "ours")
    if set(libs) - set(LIBS):
        p.error(f"unknown libraries {sorted(set(libs) - set(LIBS))}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    print("# Mutex watershed benchmark: spoco vs mwatershed vs bioimage-cpp" + (" (--quick)" if args.quick else ""))
    print()
    for line in machine_header():
        print(line)
    print(f"- warm-up + median of {args.repeats} runs; each library in its own subprocess")
    print()

    if args.quick or args.selftest:
        t0 = time.perf_counter()
        print("Convention self-test (random 2D/3D grids, mixed-sign offsets; ours vs peers):")
        for line in selftest(args.seed):
            print(line)
        print(f"  ({time.perf_counter() - t0:.1f} s)")
        print()

    shape2 = QUICK_2D if args.quick else FULL_2D
    shape3 = QUICK_3D if args.quick else FULL_3D
    jobs = []   # (case label, tag, mode, strides)
    for c in cases:
        if c == "a":
            jobs.append(("a", "2d", "aff", None))
        elif c == "b":
            jobs.append(("b", "3d", "aff", None))
        elif c == "c":
            jobs.append(("c", "3d", "aff", STRIDES_C))
        elif c == "d":
            jobs.append(("d-2D", "2d", "emb", None))
            jobs.append(("d-3D", "3d", "emb", None))

    tmp_owned = args.data_dir is None
    work = tempfile.mkdtemp(prefix="bench_mws_") if tmp_owned else args.data_dir
    os.makedirs(work, exist_ok=True)
    rows, notes = [], []
    medians = {}
    notes_mm = "n/a"
    try:
        from spoco.clustering import embedding_affinities, mutex_watershed
        shapes = {"2d": shape2, "3d": shape3}
        for label, tag, mode, strides in jobs:
            shape = shapes[tag]
            offsets, na = default_offsets(len(shape))
            C = len(offsets)
            key = f"{tag}_{'x'.join(map(str, shape))}_s{args.seed}"
            emb_path = os.path.join(work, f"emb_{key}.npy")
            aff_path = os.path.join(work, f"aff_{key}.npy")
            if not os.path.exists(emb_path):
                t0 = time.perf_counter()
                np.save(emb_path, make_embeddings(shape, args.seed))
                print(f"[data] {tag} {shape}: embeddings generated in {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)
            if not os.path.exists(aff_path):
                emb = np.load(emb_path)
                aff = embedding_affinities(emb, offsets, na, delta_d=DELTA_D)
                np.save(aff_path, aff)
                del emb, aff
            size = "x".join(map(str, shape))
            inp = emb_path if mode == "emb" else aff_path
            results = {}
            for lib in libs:
                spec = dict(lib=lib, mode=mode, input=inp, offsets=offsets.tolist(), n_attractive=na,
                            strides=None if strides is None else list(strides), repeats=args.repeats,
                            peer_affinities=args.peer_affinities,
                            labels_out=os.path.join(work, f"labels_{label}_{lib}.npy"))
                print(f"[run] case {label} {size} {lib} ...", file=sys.stderr, flush=True)
                res, err = run_worker(spec)
                results[lib] = (res, err)

            # Partition checks
            agree = {"ours": "reference"}
            if not args.no_check:
                ref = np.load(os.path.join(work, f"labels_{label}_ours.npy"))
                aff = np.load(aff_path)
                if mode == "emb":
                    same_aff = np.array_equal(eq12_affinities_numpy(np.load(emb_path), offsets, na), aff)
                    notes.append(f"({label}) numpy Eq. 12 affinities bitwise equal to "
                                 f"spoco.embedding_affinities: {'yes' if same_aff else 'NO'}")
                    notes.append(f"({label}) " + saturation_note(aff, offsets, na))
                elif label in ("a", "b"):
                    notes.append(f"({label}) " + saturation_note(aff, offsets, na))
                for lib in libs:
                    if lib == "ours" or results[lib][0] is None:
                        continue
                    lab = np.load(os.path.join(work, f"labels_{label}_{lib}.npy"))
                    if lib == "mwatershed" and strides is not None:
                        # Different stride phase: compare against ours on mwatershed's edge subset.
                        keep = mwatershed_kept_mask(shape, offsets, na, strides)
                        emul = np.where(keep, aff, np.float32(0)).astype(np.float32)
                        emul[:na] = aff[:na]
                        del keep
                        ref_e = mutex_watershed(emul, offsets, na)
                        ident, are = compare_partitions(ref_e, lab)
                        s = "n/a (other stride phase); on its edge subset: "
                        if ident:
                            agree[lib] = s + "identical"
                        else:
                            import mwatershed
                            rk = rank_priorities(emul)
                            rk[na:] *= -1
                            lab2 = mwatershed.agglom(rk, offsets.tolist(),
                                                     strides=mwatershed_strides(strides, C, na, len(shape)))
                            ident2 = compare_partitions(ref_e, lab2)[0]
                            agree[lib] = s + f"ARE {are:.2e}" + (
                                "; identical with our tie order" if ident2 else "; differs with our tie order too")
                        continue
                    ident, are = compare_partitions(ref, lab)
                    if ident:
                        agree[lib] = "identical"
                        continue
                    # Re-run on rank-mapped weights (our tie order); affinities as the peer saw them.
                    rk = rank_priorities(aff)
                    if lib == "mwatershed":
                        import mwatershed
                        rk[na:] *= -1
                        lab2 = mwatershed.agglom(rk, offsets.tolist(),
                                                 strides=mwatershed_strides(strides, C, na, len(shape)))
                    else:
                        from bioimage_cpp.segmentation import mutex_watershed as bio_mws
                        lab2 = bio_mws(rk, offsets.tolist(), na,
                                       strides=None if strides is None else tuple(strides))
                    ref2 = ref if mode == "aff" else mutex_watershed(aff, offsets, na, strides=strides)
                    ident2 = compare_partitions(ref2, lab2)[0]
                    agree[lib] = f"ARE {are:.2e}" + ("; identical with our tie order" if ident2
                                                     else "; differs with our tie order too")
                    del rk, lab2
                del aff, ref

            ours_res = results["ours"][0]
            for lib in libs:
                res, err = results[lib]
                phase = "valid" if (lib == "mwatershed" and strides is not None) else "grid"
                edges = count_edges(shape, offsets, na, strides, phase)
                if res is None:
                    rows.append([label, size, f"{edges:,}", lib, "failed", "", "", "", "", "", "", "",
                                 err.replace("|", "/").replace("\n", " ")[:160]])
                    continue
                medians[(label, lib)] = res["median_s"]
                ratio = (res["median_s"] / ours_res["median_s"]) if ours_res else float("nan")
                rows.append([label, size, f"{edges:,}", lib, f"{res['median_s']:.3f}", f"{min(res['times']):.3f}",
                             "1.00" if lib == "ours" else f"{ratio:.2f}",
                             fmt_mib(res["input_bytes"]), fmt_mib(res["work_bytes"]),
                             f"{res['work_bytes'] / edges:.1f}", f"{res['cpu_over_wall']:.2f}",
                             "-" if (lib == "ours" or mode == "emb") else f"{res['convert_s']:.3f}",
                             agree.get(lib, "not checked")])
                notes_mm = res["memory_method"]
            gc.collect()
    finally:
        if tmp_owned:
            shutil.rmtree(work, ignore_errors=True)

    hdr = ["case", "size", "edges", "library", "median s", "min s", "time / ours", "input MiB", "peak work MiB",
           "B/edge", "cpu/wall", "convert s", "partition vs ours"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" for _ in hdr) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("time / ours = peer median / our median (> 1: ours faster). cpu/wall < 1 means the process was "
          "waiting for a core (busy machine): timings are then inflated and noisy. input MiB = the array handed to the "
          "timed call (excluded from peak work). peak work = peak RSS during the warm-up call minus RSS "
          f"before it ({notes_mm}). convert s = untimed conversion of our float32 "
          "affinities to the peer's input (mwatershed: float64, signed, +2^-160). Case (d) times include the "
          f"Eq. 12 weights ({args.peer_affinities} for the peers, on the fly for ours). ARE = adapted Rand error.")
    for n in notes:
        print(f"- {n}")
    print()
    for label in ("a", "b"):
        if (label, "ours") not in medians:
            continue
        peers = [(medians[(label, lib)], lib) for lib in libs if lib != "ours" and (label, lib) in medians]
        if not peers:
            continue
        best_t, best_lib = min(peers)
        factor = best_t / medians[(label, "ours")]
        print(f"target ({label}): ours >= {TARGET_FACTOR:g}x faster than the faster peer -> achieved {factor:.2f}x "
              f"vs {best_lib} ({'met' if factor >= TARGET_FACTOR else 'NOT met'})")
    if hasattr(os, "getloadavg"):
        print(f"(load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
