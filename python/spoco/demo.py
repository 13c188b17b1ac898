"""``spoco demo``: train SPOCO@0.1 on generated microscopy images on the CPU, segment
held-out images with the mutex watershed, score them and draw a figure."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# Chosen by measurement (benchmarks/RESULTS.md, "Demo and post-processing"): the whole demo
# runs in about 4 minutes on 2 CPU cores. The nuclei are generated apart from each other
# (touching=0) on a moderately textured background (texture=0.5); 200 training images at
# SPOCO@0.1 give about 250 labelled objects (round(0.1 n) per image, at least one).
DEFAULTS = dict(kind="intensity", n_train=200, n_val=8, n_test=8, shape=(128, 128), fraction=0.1, iters=3000,
                data=dict(touching=0.0, texture=0.5))
# Training: 64x64 patches (a 4-level U-Net), Adam at 1e-3 dropped x0.2 after 3 validations
# without a better AP@0.5; validation, best.pt and prediction use the moving-average network g
# (momentum 0.995: it averages over ~200 steps, so it is trained well within the 3000) and
# 16 pixels of mirrored image past the border (no strip of false objects along it).
TRAIN = dict(patch_shape=(64, 64), batch_size=8, f_maps=8, embedding_dim=16, lr=1e-3, lr_patience=3,
             val_every=250, momentum=0.995, eval_network="g", border="mirror")


def _pca_rgb(emb: np.ndarray) -> np.ndarray:
    """First three principal components of ``(D, H, W)`` embeddings as an RGB image."""
    d = emb.reshape(emb.shape[0], -1).T
    d = d - d.mean(0)
    _, _, vt = np.linalg.svd(d[:: max(1, len(d) // 20000)], full_matrices=False)
    rgb = d @ vt[:3].T
    rgb = (rgb - rgb.min(0)) / (np.ptp(rgb, 0) + 1e-9)
    return rgb.reshape(emb.shape[1:] + (3,))


def _figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import label2rgb

    titles = ["image", "embeddings (PCA)", "segmentation", "ground truth", "training labels (SPOCO@p)"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3.1 * len(rows)), squeeze=False)
    for ax_row, (name, image, emb, seg, gt) in zip(axes, rows):
        panels = [image, _pca_rgb(emb), label2rgb(seg, bg_label=0), label2rgb(gt, bg_label=0)]
        for ax, img, title in zip(ax_row, panels, titles):
            ax.imshow(img, cmap="gray", interpolation="nearest")
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(out="demo_output", *, seed: int = 0, iters: int | None = None, kind: str | None = None,
             fraction: float | None = None, device: str = "cpu", progress: bool = True, **segment_kw) -> dict:
    """Generate data, train, segment the held-out images and report.

    Writes to ``out``: ``demo.png`` (image | PCA of embeddings | segmentation |
    ground truth), ``test_<i>_{image,seg,gt}.tif``, ``metrics.csv`` and the training
    run (``run/``: checkpoints and logs). Returns the mean metrics over the held-out
    images plus ``seconds``.
    """
    import tifffile
    import torch

    from . import metrics
    from .clustering import segment
    from .data import InstanceDataset, synthetic_images
    from .predict import predict
    from .training import Trainer, TrainConfig, load_checkpoint, model_from_checkpoint
    from .cli.evaluate import COLUMNS, format_table

    start = time.perf_counter()
    kind = kind or DEFAULTS["kind"]
    fraction = DEFAULTS["fraction"] if fraction is None else fraction
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = DEFAULTS["shape"]
    data = DEFAULTS["data"] if kind == DEFAULTS["kind"] else {}
    images, labels = synthetic_images(DEFAULTS["n_train"], shape, kind=kind, rng=seed, **data)
    test_images, test_labels = synthetic_images(DEFAULTS["n_test"], shape, kind=kind, rng=seed + 10_000, **data)
    # Validation images (dense labels, apart from the test images) pick the best checkpoint
    # and drive the learning-rate schedule, as in a real run of ``spoco train``.
    val_images, val_labels = synthetic_images(DEFAULTS["n_val"], shape, kind=kind, rng=seed + 20_000, **data)
    train = InstanceDataset(list(images), list(labels), patch_shape=TRAIN["patch_shape"], fraction=fraction,
                            seed=seed, length=4 * len(images))
    n_kept = sum(int(np.count_nonzero(np.unique(lab))) for lab in train.labels)
    n_all = sum(int(lab.max()) for lab in labels)
    print(f"spoco demo: {len(images)} generated {kind}-stained training images {shape}, "
          f"{n_kept} of {n_all} objects labelled (SPOCO@{fraction:g}); {len(test_images)} held-out images")
    config = TrainConfig(**TRAIN, max_iters=iters or DEFAULTS["iters"], fraction=fraction, seed=seed,
                         **{k: v for k, v in SEGMENT_DEFAULTS.items() if k in ("background", "background_radius", "min_size")})
    torch.manual_seed(seed)
    trainer = Trainer(config, train, list(zip(val_images, val_labels)), out_dir=out / "run", device=device,
                      progress=progress)
    trained = trainer.fit()
    model = model_from_checkpoint(load_checkpoint(out / "run" / "best.pt")).to(device)
    print(f"trained {trained['iterations']} steps in {trained['seconds']:.0f} s; best validation AP@0.5 "
          f"{trained['best_score']:.3f} (run/best.pt)")

    segment_kw = {**SEGMENT_DEFAULTS, **segment_kw}
    rows, figure_rows = [], []
    for i, (image, gt) in enumerate(zip(test_images, test_labels)):
        emb = predict(model, image, border=config.border, device=device)
        seg = segment(emb, **segment_kw)
        rows.append({"image": f"test_{i}", **{k: metrics.evaluate(gt, seg)[k] for k in COLUMNS}})
        for name, arr in (("image", image[0]), ("seg", seg.astype(np.uint16)), ("gt", gt.astype(np.uint16))):
            tifffile.imwrite(out / f"test_{i}_{name}.tif", arr)
        if i < 3:
            figure_rows.append((f"test_{i}", image[0], emb, seg, gt))
    _figure(figure_rows, out / "demo.png")
    table = format_table(rows)
    (out / "metrics.csv").write_text(
        ",".join(["image", *COLUMNS]) + "\n" + "\n".join(",".join(str(r[k]) for k in ["image", *COLUMNS])
                                                         for r in rows) + "\n")
    print(table)
    result = {k: float(np.mean([r[k] for r in rows])) for k in COLUMNS}
    result["seconds"] = time.perf_counter() - start
    print(f"held-out images: SBD {result['sbd']:.3f}, |DiC| {result['abs_dic']:.2f}, "
          f"AP@0.5 {result['ap50']:.3f}, adapted Rand error {result['are']:.3f}; "
          f"total {result['seconds']:.0f} s; figure: {out / 'demo.png'}")
    return result


# Post-processing of the demo's segmentations (see README, "Segmenting without a background class").
SEGMENT_DEFAULTS = dict(background="embedding", background_radius=2.0, merge_distance=0.0, min_size=100)
