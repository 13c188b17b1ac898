"""Quality on real images: SPOCO@p trained by ``spoco train`` next to classic pipelines.

For every labelled fraction p and seed, trains exactly as the command line does
(``spoco train --images train/images --labels train/labels --val-images val/images
--val-labels val/labels --fraction p --seed s --minutes M``, in this process), then
segments every validation image with the run's best checkpoint and the segmentation
settings that run validated (what ``spoco predict`` + ``spoco segment`` do), and scores
them. The classic, no-learning baselines (spoco.baselines) segment the same images in
the same run. Prints mean AP@0.5, SBD, |DiC| and adapted Rand error per setting (mean
± standard deviation over seeds) and the training time.

    python benchmarks/bench_realdata.py --data ../shared/data/bbbc039 --fractions 0.1 0.4 1.0 --seeds 3 --minutes 15
    python benchmarks/bench_realdata.py --data ../shared/data/isbi2012 --fractions 0.1 0.4 1.0 --seeds 3 --minutes 15

``--data`` is a folder with ``train/{images,labels}`` and ``val/{images,labels}``.
Results also go to ``--out`` (``results.csv`` with one row per run, and the runs).

Each run records its scores in ``run/scores.json``; run again with the same ``--out``,
the script reuses the runs already done with the same settings (an interrupted grid goes
on where it stopped; ``--seed-list`` adds seeds to a table). ``--rescore`` redoes the last step
of training for runs already in ``--out``, choosing the post-processing on the validation
images again with this version of spoco, and scores them (no training).

``--scribbles S`` adds simulated background scribbles to the training labels and trains
with ``--background-label 65535``: per image, short strokes (31 px long, 3 px wide) along
the middle line of the background (its skeleton), centred on random skeleton pixels,
as many as cover about a share S of the skeleton's length (``--scribbles 0.05``: ~14
strokes on a 512x512 ISBI slice, ~3 % of its membrane pixels). The objects are still
drawn by ``--fraction``; the strokes come on top (reported as "+ scribbles").
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("ap50", "sbd", "abs_dic", "are")
HEADER = ("AP@0.5", "SBD", "|DiC|", "ARE")


def read_folder(root: Path):
    from spoco.data import io

    pairs = io.list_pairs(root / "images", root / "labels")
    return [p.stem for p, _ in pairs], [io.read_array(p) for p, _ in pairs], [io.read_array(q) for _, q in pairs]


def score(gts, segs) -> dict:
    from spoco import metrics

    rows = [metrics.evaluate(gt, seg) for gt, seg in zip(gts, segs)]
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def baselines(images, gts) -> dict:
    from spoco.baselines import BASELINES

    out = {}
    for name, fn in BASELINES.items():
        start = time.perf_counter()
        out[name] = score(gts, [fn(img) for img in images]) | {"seconds": time.perf_counter() - start}
    return out


def train_and_score(data: Path, run: Path, fraction: float, seed: int, minutes: float, extra: list,
                    labels: Path | None = None) -> dict:
    from spoco.cli import main as cli
    from spoco.clustering import segment
    from spoco.predict import predict
    from spoco.training import TrainConfig, load_checkpoint, model_from_checkpoint

    argv = ["train", "--images", str(data / "train/images"), "--labels", str(labels or data / "train/labels"),
            "--val-images", str(data / "val/images"), "--val-labels", str(data / "val/labels"),
            "--fraction", str(fraction), "--seed", str(seed), "--minutes", str(minutes), "--out", str(run),
            "--quiet", *extra]
    start = time.perf_counter()
    if cli(argv) != 0:
        raise SystemExit(f"spoco {' '.join(argv)} failed")
    return score_run(data, run) | {"train_seconds": time.perf_counter() - start}


def score_run(data: Path, run: Path) -> dict:
    """Scores of ``run/best.pt`` on the validation images with the prediction and
    segmentation settings stored in it (what ``spoco predict`` + ``spoco segment`` do)."""
    from spoco.clustering import segment
    from spoco.predict import predict
    from spoco.training import TrainConfig, load_checkpoint, model_from_checkpoint

    state = load_checkpoint(run / "best.pt")
    model, config = model_from_checkpoint(state), TrainConfig.from_saved(state["config"])
    _, images, gts = read_folder(data / "val")
    segs = [segment(predict(model, img, **config.prediction()), **config.segmentation()) for img in images]
    return score(gts, segs) | {"iterations": int(state["iteration"]), "tta": bool(config.tta)}


# Settings that spoco train chooses on the validation images after training unless a flag fixes them.
CHOSEN_AFTER_TRAINING = {"foreground_threshold": ("--foreground-threshold",), "merge_distance": ("--merge-distance",),
                         "tta": ("--tta", "--no-tta")}


def rescore(data: Path, run: Path, extra: list, recorded: dict) -> dict:
    """Redo the last step of a finished run's training with this version of spoco: choose the
    post-processing of its two checkpoints on the validation images again (the settings that
    ``extra`` does not fix), then score. A run whose earlier choice was ``last.pt`` kept only
    that network in ``best.pt``: then one candidate fewer competes than at the end of training."""
    import dataclasses

    import yaml

    from spoco.predict import select_device
    from spoco.training import TrainConfig, load_checkpoint
    from spoco.training.trainer import choose_postprocessing

    config = TrainConfig.from_saved(load_checkpoint(run / "best.pt")["config"])
    open_keys = {k: None for k, flags in CHOSEN_AFTER_TRAINING.items() if not set(flags) & set(extra)}
    config = dataclasses.replace(config, **open_keys)
    _, images, gts = read_folder(data / "val")
    chosen, _ = choose_postprocessing(run, config, list(zip(images, gts)), select_device(None))
    (run / "config.yaml").write_text(yaml.safe_dump(dataclasses.replace(config, **chosen).to_dict(), sort_keys=False))
    return score_run(data, run) | {"train_seconds": recorded["train_seconds"], "rescored": True}


def recorded_or_run(data: Path, run: Path, fraction: float, seed: int, minutes: float, extra: list,
                    labels: Path, rescore_runs: bool = False) -> dict:
    """The scores of ``run`` recorded by an earlier invocation with the same settings
    (``run/scores.json``; with ``rescore_runs``, chosen and scored again by :func:`rescore`),
    else :func:`train_and_score` (recording them): an interrupted grid goes on where it stopped."""
    record = run / "scores.json"
    settings = {"data": str(data), "fraction": fraction, "seed": seed, "minutes": minutes, "extra": list(extra),
                "labels": str(labels)}
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("settings") == settings:
            if not rescore_runs:
                print(f"  (recorded in {record})", flush=True)
                return saved["scores"]
            print(f"  (trained before, post-processing chosen again: {record})", flush=True)
            scores = rescore(data, run, extra, saved["scores"])
            record.write_text(json.dumps({"settings": settings, "scores": scores}))
            return scores
    scores = train_and_score(data, run, fraction, seed, minutes, extra, labels=labels)
    record.write_text(json.dumps({"settings": settings, "scores": scores}))
    return scores


def _fmt(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f}" + (f" ± {values.std():.3f}" if len(values) > 1 else "")


SCRIBBLE_VALUE = 65535
STROKE_RADIUS = 15


def write_scribbled_labels(label_dir: Path, out_dir: Path, share: float, seed: int = 0) -> float:
    """Copies of the label images of ``label_dir`` in ``out_dir`` with strokes of
    SCRIBBLE_VALUE on the background (see the module docstring). Returns the share of
    background pixels painted."""
    import tifffile
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    from spoco.data import read_array

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    painted = background = 0
    for path in sorted(p for p in label_dir.iterdir() if not p.name.startswith(".")):
        labels = np.asarray(read_array(path))
        back = labels == 0
        ys, xs = np.nonzero(skeletonize(back))
        near = np.zeros(back.shape, bool)
        n_strokes = int(round(share * ys.size / (2 * STROKE_RADIUS)))
        for i in rng.choice(ys.size, min(ys.size, n_strokes), replace=False):
            close = (ys - ys[i]) ** 2 + (xs - xs[i]) ** 2 <= STROKE_RADIUS ** 2
            near[ys[close], xs[close]] = True
        stroke = ndi.binary_dilation(near, ndi.generate_binary_structure(2, 1)) & back
        out = labels.astype(np.uint16)
        out[stroke] = SCRIBBLE_VALUE
        tifffile.imwrite(out_dir / (path.stem + ".tif"), out)
        painted, background = painted + int(stroke.sum()), background + int(back.sum())
    return painted / max(background, 1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="folder with train/ and val/ (images/, labels/)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.4, 1.0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per fraction")
    p.add_argument("--seed-list", type=int, nargs="+", default=None, metavar="S",
                   help="these seeds instead of 0..N-1 (e.g. --seed-list 1 2 to add two seeds to a table)")
    p.add_argument("--minutes", type=float, default=15.0, help="training time limit per run")
    p.add_argument("--out", type=Path, default=None, help="folder for runs and results.csv (default: a temp dir)")
    p.add_argument("--rescore", action="store_true",
                   help="runs already trained in --out: choose their post-processing again with this version "
                   "(threshold, merge distance, test-time augmentation) and score, without training")
    p.add_argument("--scribbles", type=float, default=None, metavar="S",
                   help="add simulated background strokes covering this share of the background's skeleton")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="further spoco train options, e.g. --train-args --recipe paper (must come last)")
    args = p.parse_args(argv)
    out = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_realdata_{args.data.name}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"{args.data}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; python {platform.python_version()}", flush=True)

    names, images, gts = read_folder(args.data / "val")
    print(f"validation: {len(images)} images, {sum(int(len(np.unique(g)) - 1) for g in gts)} objects", flush=True)
    rows = [{"method": name, **res} for name, res in baselines(images, gts).items()]
    for row in rows:
        print(f"  {row['method']:<16}" + "  ".join(f"{h} {row[k]:.3f}" for h, k in zip(HEADER, METRICS)), flush=True)
    train_args, labels, suffix = list(args.train_args), args.data / "train/labels", ""
    if args.scribbles:
        labels = out / "scribbled_labels"
        share = write_scribbled_labels(args.data / "train/labels", labels, args.scribbles)
        train_args += ["--background-label", str(SCRIBBLE_VALUE)]
        suffix = " + scribbles"
        print(f"scribbles: {100 * share:.2f} % of the training background painted", flush=True)
    for fraction in args.fractions:
        for seed in args.seed_list or range(args.seeds):
            res = recorded_or_run(args.data, out / f"p{fraction:g}_s{seed}", fraction, seed, args.minutes,
                                  train_args, labels, rescore_runs=args.rescore)
            rows.append({"method": f"SPOCO@{fraction:g}{suffix}", "seed": seed, **res})
            print(f"  SPOCO@{fraction:g}{suffix} seed {seed}: " + "  ".join(f"{h} {res[k]:.3f}" for h, k in
                                                                   zip(HEADER, METRICS))
                  + f"  ({res['iterations']} steps, {res['train_seconds'] / 60:.1f} min"
                  + (", test-time augmentation" if res.get("tta") else "") + ")", flush=True)
    with open(out / "results.csv", "w", newline="") as fh:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "method", k))
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    print(f"\n{args.data.name} validation ({len(images)} images), mean ± std over seeds; load after "
          f"{os.getloadavg()[0]:.2f}")
    print("| method | " + " | ".join(HEADER) + " | training |")
    print("|---|" + "---|" * (len(HEADER) + 1))
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        cells = [_fmt([r[k] for r in group]) for k in METRICS]
        train = (f"{np.mean([r['train_seconds'] for r in group]) / 60:.1f} min" if "train_seconds" in group[0]
                 else "none")
        print(f"| {method} | " + " | ".join(cells) + f" | {train} |")
    print(f"results: {out / 'results.csv'}")


if __name__ == "__main__":
    sys.exit(main())
