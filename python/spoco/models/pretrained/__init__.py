"""Networks trained by the spoco project and shipped with the package.

=========  ==================================================================================
name       what
=========  ==================================================================================
nuclei     2D U-Net with a foreground head, trained on the BBBC039 training split (U2OS
           nuclei, Hoechst, fluorescence, 520×696, dense labels, CC0); see ``nuclei.md``
=========  ==================================================================================

``spoco predict --model nuclei``, ``spoco segment --model nuclei image.tif`` and
``spoco train --finetune nuclei`` use them by name. They are never the starting point of
``spoco train`` unless asked for: results reported as SPOCO@p start from random weights.
"""
from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent
MODELS = {"nuclei": "nuclei.pt"}


def resolve(name_or_path) -> Path:
    """The checkpoint file of a shipped model's name, or ``name_or_path`` itself as a path."""
    text = str(name_or_path)
    if text in MODELS and not Path(text).exists():
        path = FOLDER / MODELS[text]
        if not path.is_file():
            raise FileNotFoundError(f"the pretrained model {text!r} is missing from this installation ({path})")
        return path
    return Path(text)
