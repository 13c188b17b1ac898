"""Save a PNG of synthetic images (spoco.data.synthetic.synthetic_images) with their labels.

Rows: boundary 2D, intensity 2D, then a middle slice of each 3D flavour; columns
alternate image | labels. Prints the generation time per image and object counts.

    python benchmarks/show_synthetic.py --out synthetic.png
"""
from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from spoco.data.synthetic import synthetic_images  # noqa: E402


def _glasbey(labels):
    rng = np.random.default_rng(0)
    lut = rng.uniform(0.2, 1.0, size=(int(labels.max()) + 1, 3))
    lut[0] = 0
    return lut[labels]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="synthetic.png")
    ap.add_argument("--n", type=int, default=3, help="images per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs="+", default=[128, 128])
    ap.add_argument("--shape3d", type=int, nargs=3, default=[32, 64, 64])
    args = ap.parse_args(argv)
    rows = []
    for kind in ("boundary", "intensity"):
        for shape in (tuple(args.shape), tuple(args.shape3d)):
            t0 = time.perf_counter()
            img, lab = synthetic_images(args.n, shape, kind=kind, rng=args.seed)
            dt = (time.perf_counter() - t0) / args.n
            counts = [int(l.max()) for l in lab]
            print(f"{kind:9s} {str(shape):14s} {dt * 1e3:7.1f} ms/image  objects {counts}")
            if len(shape) == 3:
                img, lab = img[:, :, shape[0] // 2], lab[:, shape[0] // 2]
            rows.append((f"{kind} {shape}", img[:, 0], lab))
    fig, axes = plt.subplots(len(rows), 2 * args.n, figsize=(4 * args.n, 2.1 * len(rows)), squeeze=False)
    for r, (title, imgs, labs) in enumerate(rows):
        for i in range(args.n):
            axes[r, 2 * i].imshow(imgs[i], cmap="gray")
            axes[r, 2 * i + 1].imshow(_glasbey(labs[i]), interpolation="nearest")
        axes[r, 0].set_ylabel(title, fontsize=7)
    for a in axes.ravel():
        a.set_xticks([]), a.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
