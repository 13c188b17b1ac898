"""The layer rules of docs/architecture.md: the import-linter contracts hold, fail on a
forbidden import, and the light entry points do not load torch."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent))


# lint-imports on the spoco found first on PYTHONPATH (an editable install's redirecting
# finder would otherwise answer for the package)
_LINT_CODE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "Redirect" not in type(f).__name__]
sys.argv = ["lint-imports", "--config", sys.argv[1], "--no-cache"]
from importlinter.cli import lint_imports_command
sys.exit(lint_imports_command())
"""


def lint(package_parent: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(package_parent), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([sys.executable, "-c", _LINT_CODE, str(ROOT / "pyproject.toml")], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.skipif(LINT is None, reason="import-linter is not installed")
def test_contracts_hold_and_fail_on_a_forbidden_import(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "python" / "spoco", copy / "spoco", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    ok = lint(copy)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    metrics = copy / "spoco" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom .training import Trainer  # a layer leak\n")
    broken = lint(copy)
    assert broken.returncode != 0 and "spoco.metrics -> spoco.training" in broken.stdout, broken.stdout[-2000:]


@pytest.mark.parametrize("code", [
    "import spoco, spoco.metrics, spoco.clustering",
    "from spoco.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass",
    "from spoco.cli import main\ntry:\n    main(['segment', '--help'])\nexcept SystemExit:\n    pass",
])
def test_light_entry_points_do_not_import_torch(code):
    proc = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False", "torch was imported"
