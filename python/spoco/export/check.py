"""Checking a written package the way bioimage.io does: format validation of rdf.yaml, then
``bioimageio.core``'s test run (every weights format reproduces the test output from the
test input, at the declared input sizes and batch sizes)."""
from __future__ import annotations


def check_package(path) -> tuple[str, str]:
    """``(status, report)`` of :func:`bioimageio.core.test_model` on the package at ``path``:
    status ``"passed"`` or ``"failed"``; the report lists each check that did not pass,
    with its errors. Raises ``ImportError`` without the ``export`` extra. Leaves numpy's and
    torch's global random state as it was."""
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise ImportError("testing a package needs bioimageio.core: pip install 'spoco[export]'") from None
    import numpy as np
    import torch

    # test_model seeds numpy's and torch's global generators and sets torch's determinism
    # flag: the caller's are restored.
    np_state, deterministic = np.random.get_state(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with torch.random.fork_rng(devices=[]):
            summary = test_model(str(path))
    finally:
        np.random.set_state(np_state)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    lines = []
    for detail in summary.details:
        if detail.status != "passed":
            lines.append(f"{detail.status}: {detail.name}")
            lines += [f"  {'.'.join(map(str, e.loc))}: {e.msg}" for e in detail.errors]
    return ("passed" if summary.status == "passed" else "failed"), "\n".join(lines)
