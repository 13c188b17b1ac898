"""spoco: instance segmentation with pixel embeddings trained from sparse object
annotations (Wolny et al., CVPR 2022)."""
__version__ = "0.1.0"

from . import _core  # noqa: E402  (the compiled core must import first)
from . import sampling  # noqa: E402
from ._config import show_config  # noqa: E402
from .clustering import cluster, cluster_blockwise  # noqa: E402
from . import metrics  # noqa: E402
from .ema import EMANet  # noqa: E402
from .loss import SPOCOLoss  # noqa: E402
from . import adversarial  # noqa: E402

__all__ = ["EMANet", "SPOCOLoss", "__version__", "adversarial", "cluster", "cluster_blockwise", "metrics", "sampling",
           "show_config"]
