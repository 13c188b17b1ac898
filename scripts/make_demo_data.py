"""Write the small BBBC039 subset that ``spoco demo`` trains on (python/spoco/demo_data/bbbc039).

    python scripts/make_demo_data.py ../shared/data/bbbc039

BBBC039 (Caicedo et al., Cytometry A 2019; Broad Bioimage Benchmark Collection) is CC0.
The subset: 16 training fields of the collection's training split (one of them an empty
field of view, as real screens have), 2 further training fields with their dense labels
for validation, and 4 fields of the validation split as held-out test images, stored as
zlib-compressed tifs (about 8 MB).
"""
import sys
from pathlib import Path

import numpy as np
import tifffile

N_TRAIN, N_VAL, N_TEST, SEED = 16, 2, 4, 0
EMPTY_FIELD = "IXMtest_F13_s7"


def main(src: Path, dst: Path) -> None:
    rng = np.random.default_rng(SEED)
    train = sorted(p.stem for p in (src / "train/images").glob("*.tif"))
    others = [n for n in train if n != EMPTY_FIELD]
    picked = list(rng.choice(others, N_TRAIN - 1 + N_VAL, replace=False))
    splits = {"train": sorted(picked[:N_TRAIN - 1] + [EMPTY_FIELD]), "val": sorted(picked[N_TRAIN - 1:])}
    test = sorted(p.stem for p in (src / "val/images").glob("*.tif"))
    splits["test"] = sorted(rng.choice(test, N_TEST, replace=False))
    for split, names in splits.items():
        origin = "val" if split == "test" else "train"
        for sub in ("images", "labels"):
            (dst / split / sub).mkdir(parents=True, exist_ok=True)
            for name in names:
                arr = tifffile.imread(src / origin / sub / f"{name}.tif")
                tifffile.imwrite(dst / split / sub / f"{name}.tif", arr, compression="zlib",
                                 compressionargs={"level": 9}, predictor=sub == "images")
    size = sum(p.stat().st_size for p in dst.rglob("*.tif"))
    print(f"{dst}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f"; {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "python/spoco/demo_data/bbbc039")
