"""What a package shows a person: its README.md (what the model is, how it was trained,
how to turn its output into instances) and its cover image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SPOCO_CITATION = ("Wolny, A., Yu, Q., Pape, C., Kreshuk, A.: Sparse Object-level Supervision for Instance "
                  "Segmentation with Pixel Embeddings. CVPR 2022")
SPOCO_DOI = "10.48550/arXiv.2103.14572"

# TrainConfig keys listed in the README's training table, in this order (the full config
# is in rdf.yaml under config.spoco.train_config).
_RECIPE = ("fraction", "sparse", "patch_shape", "batch_size", "max_iters", "max_minutes", "lr", "lr_schedule",
           "warmup", "weight_decay", "embedding_dim", "f_maps", "depth", "norm", "delta_v", "delta_d",
           "consistency", "momentum", "eval_network", "ema_buffers", "tta",
           "foreground", "foreground_weight", "spatial_scale",
           "augment", "adversarial", "seed")
# spoco segment's flag for each segmentation setting.
_FLAGS = {"delta_d": "--delta-d", "foreground_threshold": "--foreground-threshold", "background": "--background",
          "background_radius": "--background-radius", "merge_distance": "--merge-distance",
          "min_size": "--min-size"}


def segment_command(settings: dict) -> str:
    """``spoco segment`` with the flags that apply ``settings`` (:meth:`TrainConfig.segmentation`)
    to embeddings that do not carry them (e.g. written by another bioimage.io consumer)."""
    flags = [f"{_FLAGS[k]} {v:g}" if isinstance(v, float) else f"{_FLAGS[k]} {v}"
             for k, v in settings.items() if k in _FLAGS and (k != "foreground_threshold" or settings["foreground"])]
    return "spoco segment embeddings.tif --out labels.tif " + " ".join(flags)


def readme(*, name: str, description: str, spoco: dict, test_image: str, best_score) -> str:
    """The package's README.md (Markdown); ``spoco`` is the rdf.yaml's ``config.spoco``."""
    train, model, seg = spoco["train_config"], spoco["model_config"], spoco["segmentation"]
    ndim, dim, fg = model["ndim"], model["out_channels"], bool(model.get("foreground"))
    fraction = train.get("fraction")
    if fraction:
        labels = (f"**SPOCO@{fraction:g}**: trained with the labels of {fraction:.0%} of the annotated objects, "
                  "every other pixel unlabeled")
    elif train.get("sparse", True):
        labels = "trained with the labels as given, 0 = unlabeled (only some objects need labels)"
    else:
        labels = "trained with dense labels (0 = background)"
    axes = "z, y, x" if ndim == 3 else "y, x"
    scale = model.get("spatial_scale")
    channels = [f"- channels 0–{dim - 1}: the pixel embeddings (D = {dim})"]
    if scale:
        channels.append(f"- channels 0–{ndim - 1} are *spatial*: the network's offset plus the pixel's coordinate "
                        f"({axes}, in pixels from the input's first pixel) divided by spatial_scale = {scale:g}")
    if fg:
        channels.append(f"- channel {dim}: the foreground probability min(1, sigmoid(logit) / c), c = "
                        f"{spoco['label_rate']:.4g} (the share of object pixels labelled in training)")
    tiling = ("The network adds the coordinates itself, counted from the first pixel of what it is given:\n"
              "predict whole images. A consumer that cuts an image into tiles has to add\n"
              "`tile origin / spatial_scale` to the spatial channels of each tile; `spoco predict` does."
              if scale else "The embeddings do not depend on the position in the image: tiles with a halo of\n"
              "context give the whole-image output.")
    rows = "\n".join(f"| `{k}` | {train[k]} |" for k in _RECIPE if k in train)
    tta = ("\nThe training run chose test-time augmentation (`tta: true`): `spoco predict` averages the\n"
           "predictions of the 8 orientations of the image (quarter turns, with and without a flip),\n"
           "the spatial channels moved back as positions; a consumer that predicts once gets slightly\n"
           "more split objects than the validation score says.\n" if train.get("tta") else "")
    settings = "\n".join(f"| `{k}` | {v} |" for k, v in seg.items())
    validated = best_score is not None and np.isfinite(best_score)  # -inf: a run without validation images
    score = (f"The network kept ({spoco['network']}) reached AP@0.5 = {best_score:.3f} on the training run's "
             "validation images, segmented with the settings above." if validated else
             "The training run recorded no validation score (no validation images).")
    source = train.get("data") or {}
    if source.get("images"):
        data = (f"Trained on the images of `{source['images']}` with the labels of `{source['labels']}`"
                + (f" ({source['summary']})" if source.get("summary") else "")
                + (f", validated on `{source['val_images']}`" if source.get("val_images") else "") + ".")
    else:
        data = "The checkpoint does not record where the training images were."
    return f"""# {name}

{description}

A {ndim}D U-Net ({model['depth']} levels, {model['f_maps']} feature maps at the first, {model['norm']}
normalisation) that maps an image to pixel embeddings: pixels of one object get nearby
embeddings, pixels of different objects distant ones, and clustering the embeddings gives
the instances. Trained with spoco, an implementation of SPOCO (Wolny et al., CVPR 2022),
instance segmentation from *sparse* object annotations: {labels}.

## Input and output

- input `raw`: ({'batch, channel, ' + axes}), raw intensities, {model['in_channels']} channel(s). Preprocessing
  (in rdf.yaml): each channel scaled so that its 1st percentile becomes 0 and its 99.8th
  percentile 1 (`scale_range`), as spoco normalises for training and prediction.
- output `embeddings`: ({'batch, channel, ' + axes}), {dim + int(fg)} channels:
{chr(10).join('  ' + c for c in channels)}

{tiling}

## From embeddings to instances

Mutex watershed on the embeddings (long-range offsets 3, 9, 27 along every axis) with the
settings the training run validated (also in rdf.yaml under `config.spoco.segmentation`):

| setting | value |
|---|---|
{settings}

With spoco installed, the package replaces the checkpoint and the settings travel with
the embeddings:

```bash
spoco predict --checkpoint model.zip --images image.tif --out embeddings.h5
spoco segment embeddings.h5 --out labels.tif
```

Embeddings computed elsewhere (saved as a `(channel, {axes})` array without the batch axis):

```bash
{segment_command(seg)}
```

In Python: `spoco.clustering.segment(embeddings, **settings)` with the settings above.
{tta}
## Training

The settings of the training run (`spoco train`; all of them in rdf.yaml under
`config.spoco.train_config`):

| setting | value |
|---|---|
{rows}

{data} The test image of this package: {test_image}.

## Validation

{score} To validate on other data, segment densely annotated images as above and score
them with `spoco evaluate --gt labels/ --pred segmentation/` (AP@0.5, SBD, |DiC|).

## Weights

- `torchscript`: the whole network (U-Net, coordinates, foreground probability); needs only PyTorch.
- `pytorch_state_dict`: the same weights for `spoco.export.network.EmbeddingNetwork`
  (needs spoco); `spoco predict` loads these.

## Citation

{SPOCO_CITATION}. https://doi.org/{SPOCO_DOI}
"""


def write_cover(path: Path, image: np.ndarray, embeddings: np.ndarray, foreground: bool) -> Path:
    """A PNG: the input ``(C, *spatial)`` | the principal components of the embeddings
    ``(D[+1], *spatial)`` as RGB (middle slice of a volume), each panel 256 pixels high."""
    from skimage.transform import resize

    from ..data import io
    from ..visualize import display_range, pca_rgb

    if image.ndim == 4:  # (C, Z, Y, X): the middle slice
        image, embeddings = image[:, image.shape[1] // 2], embeddings[:, embeddings.shape[1] // 2]
    features = embeddings[:-1] if foreground else embeddings
    grey = display_range(image)
    panels = [np.repeat(grey[..., None], 3, axis=-1), pca_rgb(features)]
    size = (256, max(1, round(256 * grey.shape[1] / grey.shape[0])))
    panels = [resize(p, size + (3,), order=0, anti_aliasing=False) for p in panels]
    picture = np.concatenate([panels[0], np.ones((size[0], 8, 3)), panels[1]], axis=1)
    io.write_array(path, np.moveaxis((picture * 255).round().astype(np.uint8), -1, 0))
    return path
