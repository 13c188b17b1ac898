"""The training example of docs/training.md is examples/train_loop.py, and it runs as written."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_training_example() -> str:
    readme = (ROOT / "docs" / "training.md").read_text()
    section = readme.split("# Training with SPOCOLoss and EMANet", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_examples_train_loop():
    assert readme_training_example() == (ROOT / "examples" / "train_loop.py").read_text()


def test_readme_example_runs(tmp_path):
    script = tmp_path / "readme_example.py"
    script.write_text(readme_training_example())
    # One OpenMP thread: on small shared CI machines libgomp's spin-waiting makes
    # multi-threaded small ops orders of magnitude slower; the result is the same.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "5", "10", "15"]
    assert all("'consistency'" in line and "'total'" in line for line in lines)
