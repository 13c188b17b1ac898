"""``spoco evaluate``: score segmentations against ground truth."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from . import CLIError

COLUMNS = ("sbd", "abs_dic", "ap50", "map", "are", "n_gt", "n_pred")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score segmentations: SBD, |DiC|, AP@0.5, mAP, adapted Rand error",
        description="Compare predicted label images with ground-truth label images (0 = background, ignored). "
        "Takes two files, or two folders whose files are paired by name without suffix. Prints one row per "
        "image and the mean: SBD (symmetric best Dice), |DiC| (difference in object count), AP@0.5 and "
        "mAP@[0.5:0.95] (one-to-one IoU matching), ARE (adapted Rand error; lower is better).")
    p.add_argument("--gt", required=True, help="ground-truth label file or folder")
    p.add_argument("--pred", required=True, help="predicted label file or folder")
    p.add_argument("--gt-key", help="dataset key of the ground truth inside HDF5/zarr files")
    p.add_argument("--pred-key", help="dataset key of the predictions inside HDF5/zarr files")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.set_defaults(func=run)


def _pairs(gt, pred):
    from ..data import io

    g, p = Path(io.split_key(gt)[0]), Path(io.split_key(pred)[0])
    g_dir, p_dir = g.is_dir() and g.suffix != ".zarr", p.is_dir() and p.suffix != ".zarr"
    if g_dir != p_dir:
        raise CLIError("--gt and --pred must both be files or both be folders")
    if g_dir:
        return [(b.stem, b, a) for b, a in io.list_pairs(g, p)]
    return [(p.stem, gt, pred)]


def evaluate_files(pairs, gt_key=None, pred_key=None) -> list[dict]:
    from .. import metrics
    from ..data import io

    rows = []
    for name, gt_path, pred_path in pairs:
        gt, pred = io.read_array(gt_path, gt_key), io.read_array(pred_path, pred_key)
        if gt.shape != pred.shape:
            raise CLIError(f"{name}: ground truth {gt_path} has shape {gt.shape} but prediction {pred_path} "
                           f"{pred.shape}")
        try:
            scores = metrics.evaluate(gt, pred)
        except (TypeError, ValueError) as err:  # labels that are no labels: negative, float, ...
            raise CLIError(f"{name}: {err} (ground truth {gt_path}, prediction {pred_path})") from None
        rows.append({"image": name, **{k: scores[k] for k in COLUMNS}})
    return rows


def format_table(rows) -> str:
    import numpy as np

    mean = {"image": "mean", **{k: float(np.mean([r[k] for r in rows])) for k in COLUMNS}}
    width = max(len(str(r["image"])) for r in rows + [mean])
    lines = [f"{'image':<{width}}  " + "  ".join(f"{k:>7}" for k in COLUMNS)]
    for r in rows + ([mean] if len(rows) > 1 else []):
        lines.append(f"{str(r['image']):<{width}}  " + "  ".join(
            f"{r[k]:>7.3f}" if isinstance(r[k], float) else f"{r[k]:>7}" for k in COLUMNS))
    return "\n".join(lines)


def run(args) -> int:
    rows = evaluate_files(_pairs(args.gt, args.pred), args.gt_key, args.pred_key)
    print(format_table(rows))
    if args.csv:  # written whole under a temporary name, then renamed
        import io

        from .._journal import write_atomic

        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=["image", *COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(Path(args.csv), text.getvalue().encode(), durable=False)
    sys.stdout.flush()
    return 0
