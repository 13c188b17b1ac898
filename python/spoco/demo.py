"""``spoco demo``: train SPOCO@0.1 on real nuclei on the CPU, segment held-out fields,
score them next to the classic pipeline, and draw a figure.

The default data is a small subset of BBBC039 shipped with spoco (``spoco/demo_data``,
CC0; see ``scripts/make_demo_data.py``): 16 training fields (one of them empty, as real
screens have), 2 validation fields and 4 held-out test fields of U2OS nuclei, 520×696
uint16. ``data="synthetic"`` uses generated images instead (no files needed).
Training uses the default recipe of ``spoco train`` (:mod:`spoco.training.recipe`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "demo_data" / "bbbc039"
DATASETS = ("nuclei", "synthetic")
# Training steps of the demo: 7 to 10 minutes on 2 CPU cores (README, "What the demo shows"),
# and a time limit that ends the schedule earlier on a slower host, so that the whole demo
# (training, choosing the post-processing, the test fields, the figure) stays within 10 minutes.
ITERS = 5000
MINUTES = 8.0
FRACTION = 0.1
COLUMNS = ("ap50", "sbd", "abs_dic", "are", "n_gt", "n_pred")


def _figure(rows, train_example, path: Path) -> None:
    """One row per test image: image | embeddings (PCA) | segmentation | ground truth,
    and a fifth column with a training image and its sparse labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import label2rgb

    from .visualize import display_range, pca_rgb

    titles = ["image", "embeddings (PCA)", "segmentation", "ground truth"]
    fig, axes = plt.subplots(len(rows), 5, figsize=(17, 2.9 * len(rows)), squeeze=False)
    for r, (ax_row, (name, image, emb, seg, gt)) in enumerate(zip(axes, rows)):
        panels = [display_range(image), pca_rgb(emb), label2rgb(seg, bg_label=0), label2rgb(gt, bg_label=0)]
        for ax, img, title in zip(ax_row, panels, titles):
            ax.imshow(img, cmap="gray", interpolation="nearest")
            ax.set_title(f"{name}: {title}", fontsize=8)
        if r < len(train_example):
            t_name, t_image, t_labels = train_example[r]
            ax_row[4].imshow(label2rgb(t_labels, image=display_range(t_image), bg_label=0, alpha=0.5))
            ax_row[4].set_title(f"training {t_name}: labels used (SPOCO@p)", fontsize=8)
        for ax in ax_row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _load(split: str):
    from .data import io

    pairs = io.list_pairs(DATA_DIR / split / "images", DATA_DIR / split / "labels")
    return ([p.stem for p, _ in pairs], [io.read_array(p) for p, _ in pairs],
            [io.read_array(q).astype(np.int64) for _, q in pairs])


def _synthetic(seed: int):
    from .data import synthetic_images

    def split(n, offset, prefix):
        images, labels = synthetic_images(n, (128, 128), kind="intensity", rng=seed + offset, touching=0.0,
                                          texture=0.5)
        return [f"{prefix}_{i}" for i in range(n)], list(images), list(labels)

    return split(200, 0, "train"), split(8, 20_000, "val"), split(8, 10_000, "test")


def _table(rows) -> str:
    width = max(len(r["method"]) for r in rows)
    lines = [f"{'':<{width}}  " + "  ".join(f"{k:>7}" for k in COLUMNS)]
    for r in rows:
        lines.append(f"{r['method']:<{width}}  " + "  ".join(f"{r[k]:>7.3f}" for k in COLUMNS))
    return "\n".join(lines)


def run_demo(out="demo_output", *, data: str = "nuclei", seed: int = 0, iters: int | None = None,
             fraction: float | None = None, device: str = "cpu", progress: bool = True,
             minutes: float | None = MINUTES) -> dict:
    """Train SPOCO@p on ``data``, segment the held-out images, compare with the classic
    pipeline and report.

    Writes to ``out``: ``demo.png`` (image | PCA of the embeddings | segmentation | ground
    truth | a training image with the labels used), ``<name>_{seg,gt}.tif`` per test
    image, ``metrics.csv`` (one row per test image and method) and the training run
    (``run/``). Training stops after ``iters`` steps or ``minutes`` (None: no limit),
    whichever comes first; the learning-rate schedule ends with it. Returns the mean
    metrics of spoco over the test images (``ap50``, ``sbd``, ``abs_dic``, ``are``), the
    classic baseline's as ``baseline_<metric>``, and ``seconds``.
    """
    import tifffile
    import torch

    from . import metrics
    from .baselines import otsu_watershed
    from .clustering import segment
    from .data import InstanceDataset
    from .predict import predict
    from .data.sampling import sparsify
    from .training import Trainer, load_checkpoint, model_from_checkpoint
    from .training.recipe import auto_config, summarize_labels

    if data not in DATASETS:
        raise ValueError(f"data must be one of {DATASETS}, got {data!r}")
    start = time.perf_counter()
    fraction = FRACTION if fraction is None else fraction
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data == "nuclei":
        train, val, test = _load("train"), _load("val"), _load("test")
    else:
        train, val, test = _synthetic(seed)
    seen = [sparsify(lab, fraction, seed, image_index=i) for i, lab in enumerate(train[2])]
    summary = summarize_labels(seen)
    config, reasons = auto_config(summary, dict(fraction=fraction, seed=seed, max_iters=iters or ITERS,
                                                max_minutes=minutes))
    what = "BBBC039 nuclei fields" if data == "nuclei" else "generated images"
    print(f"spoco demo: {len(train[1])} {what} for training, {summary.line().split(', ', 1)[1]} "
          f"(SPOCO@{fraction:g} of {sum(int(lab.max() > 0) and len(np.unique(lab)) - 1 for lab in train[2])}); "
          f"{len(test[1])} held-out test images")
    for reason in reasons:
        print(f"  {reason}")
    dataset = InstanceDataset(train[1], train[2], patch_shape=config.patch_shape, fraction=fraction, seed=seed,
                              length=config.samples_per_epoch, border_background=config.border_background)
    torch.manual_seed(seed)
    trainer = Trainer(config, dataset, list(zip(val[1], val[2])), out_dir=out / "run", device=device,
                      progress=progress)
    trained = trainer.fit()
    model = model_from_checkpoint(load_checkpoint(out / "run" / "best.pt")).to(device)
    print(f"trained {trained['iterations']} steps in {trained['seconds']:.0f} s; best validation AP@0.5 "
          f"{trained['best_score']:.3f} (run/best.pt)")

    rows, figure_rows, ours, classic = [], [], [], []
    for name, image, gt in zip(*test):
        emb = predict(model, image, **config.prediction(), device=device)
        seg = segment(emb, **config.segmentation())
        base = otsu_watershed(image)
        for method, labels, store in (("spoco", seg, ours), ("otsu_watershed", base, classic)):
            scores = metrics.evaluate(gt, labels)
            store.append(scores)
            rows.append({"image": name, "method": method, **{k: scores[k] for k in COLUMNS}})
        for kind, arr in (("seg", seg), ("gt", gt)):
            tifffile.imwrite(out / f"{name}_{kind}.tif", arr.astype(np.uint16), compression="zlib")
        if len(figure_rows) < 3:
            figure_rows.append((name, image, emb[:-1] if config.foreground else emb, seg, gt))
    shown = [(n, im, lab) for n, im, lab in zip(train[0], train[1], dataset.labels) if lab.max() > 0][:3]
    _figure(figure_rows, shown, out / "demo.png")
    (out / "metrics.csv").write_text(
        ",".join(["image", "method", *COLUMNS]) + "\n"
        + "".join(",".join(str(r[k]) for k in ["image", "method", *COLUMNS]) + "\n" for r in rows))
    mean = {m: {k: float(np.mean([s[k] for s in store])) for k in COLUMNS}
            for m, store in (("spoco", ours), ("otsu_watershed", classic))}
    print(_table([{"method": f"spoco SPOCO@{fraction:g}", **mean["spoco"]},
                  {"method": "Otsu + watershed", **mean["otsu_watershed"]}]))
    result = dict(mean["spoco"]) | {f"baseline_{k}": v for k, v in mean["otsu_watershed"].items()}
    result["seconds"] = time.perf_counter() - start
    print(f"held-out test images: spoco AP@0.5 {result['ap50']:.3f} vs {result['baseline_ap50']:.3f} for Otsu + "
          f"watershed; total {result['seconds']:.0f} s; figure: {out / 'demo.png'}")
    return result
