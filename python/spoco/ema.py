"""``spoco.EMANet``: the momentum g-network of the consistency term (Sec. 3.2, A.3, A.6)."""
from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

_BUFFER_MODES = ("copy", "ema", "own")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel/DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


class EMANet(nn.Module):
    """g, an exponential moving average of the network f: ``θ_g ← m θ_g + (1 − m) θ_f``.

    g starts as a deep copy of f (unwrapped from DDP / ``torch.compile``) without
    gradients; call :meth:`update` after every ``optimizer.step()``. Calling the
    EMANet runs g under ``torch.no_grad()``. g follows the EMANet's train/eval mode.
    g lives where f lived at construction: create the EMANet after moving f to its
    device (or move the EMANet with ``.to()`` as well).

    Parameters
    ----------
    f : nn.Module
        The trained network; may be wrapped in DistributedDataParallel or compiled.
        f is referenced, not registered: it is not part of this module's parameters
        or ``state_dict``.
    momentum : float in [0, 1]
        m; the paper's best is 0.999 (A.6). 0 makes g a copy of f after each update.
    buffers : {"copy", "ema", "own"}
        What :meth:`update` does with buffers: copy f's (default), average them like
        parameters (integer buffers are copied), or ``"own"``: leave the running
        statistics of g's normalisation layers (BatchNorm, InstanceNorm with
        ``track_running_stats``) to g, which measures them itself in train mode, and
        copy f's other buffers (e.g. the foreground head's labelled rate, which no
        forward pass measures).

    Attributes
    ----------
    g : nn.Module
        The averaged network.
    num_updates : torch.Tensor
        int64 scalar buffer, the number of :meth:`update` calls (saved in ``state_dict``).
    """

    def __init__(self, f: nn.Module, momentum: float = 0.999, buffers: str = "copy"):
        super().__init__()
        if not isinstance(f, nn.Module):
            raise TypeError(f"f must be a torch.nn.Module, got {type(f).__name__}")
        if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        if buffers not in _BUFFER_MODES:
            raise ValueError(f"buffers must be one of {_BUFFER_MODES}, got {buffers!r}")
        source = unwrap(f)
        object.__setattr__(self, "_f", source)  # a reference, not a submodule
        self.momentum = float(momentum)
        self.buffers_mode = buffers
        self.g = copy.deepcopy(source)
        self.g.requires_grad_(False)
        # Buffers that g's own train-mode forwards keep up to date ("own" leaves them alone).
        self._measured = {f"{prefix}.{name}" if prefix else name
                          for prefix, module in self.g.named_modules()
                          if isinstance(module, nn.modules.batchnorm._NormBase)
                          for name, _ in module.named_buffers(recurse=False)}
        self.train(source.training)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    @property
    def f(self) -> nn.Module:
        """The (unwrapped) network being averaged."""
        return self._f

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.g(*args, **kwargs)

    def _pairs(self, named_g, named_f, what: str):
        f_items = dict(named_f)
        pairs = []
        for name, tg in named_g:
            tf = f_items.get(name)
            if tf is None or tf.shape != tg.shape:
                raise RuntimeError(f"{what} {name!r} of g has no counterpart of shape {tuple(tg.shape)} in f; "
                                   "was f's architecture changed after creating the EMANet?")
            pairs.append((tg, tf.detach().to(tg.device)))
        return pairs

    @torch.no_grad()
    def update(self) -> None:
        """One momentum step ``θ_g ← m θ_g + (1 − m) θ_f`` (call after ``optimizer.step()``)."""
        w = 1.0 - self.momentum
        params = self._pairs(self.g.named_parameters(), self._f.named_parameters(), "parameter")
        avg = [(tg, tf) for tg, tf in params if tg.is_floating_point()]
        if avg:
            torch._foreach_lerp_([tg for tg, _ in avg], [tf.to(tg.dtype) for tg, tf in avg], w)
        for tg, tf in params:
            if not tg.is_floating_point():
                tg.copy_(tf)
        named_g = self.g.named_buffers()
        if self.buffers_mode == "own":
            named_g = [(name, b) for name, b in named_g if name not in self._measured]
        for tg, tf in self._pairs(named_g, self._f.named_buffers(), "buffer"):
            if self.buffers_mode == "ema" and tg.is_floating_point():
                tg.lerp_(tf.to(tg.dtype), w)
            else:
                tg.copy_(tf)
        self.num_updates += 1

    def extra_repr(self) -> str:
        return f"momentum={self.momentum:g}, buffers={self.buffers_mode!r}"
