"""The completion marker of arrays written piece by piece (HDF5/zarr outputs of
block-wise segmentation and tiled prediction): a bottom-layer helper shared by
:mod:`spoco.data.io` and :mod:`spoco.clustering` (which takes arrays, not files)."""
from __future__ import annotations


#: Attribute of an HDF5/zarr output that says whether its writer finished. Outputs
#: written block by block are created with ``False`` and set to ``True`` at the end,
#: so an interrupted run never leaves something that looks like a result.
COMPLETE_ATTR = "spoco_complete"


class IncompleteArrayError(ValueError):
    """An array marked ``spoco_complete = False``: its writer was interrupted."""


def set_complete(array, value: bool) -> None:
    """Record whether ``array`` holds a finished result (no-op for arrays without attributes)."""
    attrs = getattr(array, "attrs", None)
    if attrs is None:
        return
    attrs[COMPLETE_ATTR] = bool(value)
    f = getattr(array, "file", None)
    if f is not None and hasattr(f, "flush"):
        f.flush()


def check_complete(array, name: str = "array") -> None:
    """Raise :class:`IncompleteArrayError` if ``array`` is marked as an interrupted write."""
    attrs = getattr(array, "attrs", None)
    if attrs is not None and COMPLETE_ATTR in attrs and not bool(attrs[COMPLETE_ATTR]):
        raise IncompleteArrayError(f"{name} is incomplete ({COMPLETE_ATTR}=False): the run that wrote it "
                                   "was interrupted; run it again")
