"""The SPOCO loss (:class:`SPOCOLoss`): the term definitions and their one assembly
(:mod:`.terms`), two backends that reduce pixels into sums (:mod:`.fused_sums`,
:mod:`.torch_sums`) and the loop oracle (:mod:`.reference`, for tests)."""
from .spoco_loss import SPOCOLoss
from .terms import TERMS, kernel_sigma2

__all__ = ["SPOCOLoss", "TERMS", "kernel_sigma2"]
