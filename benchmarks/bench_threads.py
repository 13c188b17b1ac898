"""Training-step time alone and beside a competing process, by thread count and OpenMP
wait policy.

    python benchmarks/bench_threads.py [--steps 60]

Each setting runs in a fresh subprocess (the wait policy must be set before torch
starts): the default recipe's network (f_maps 8, D 16, foreground head) on 64×64
patches, batch 8, SPOCOLoss + EMA update, ``--steps`` timed steps after 5 warm-up
steps. "busy" runs a second process that spins one core in pure Python for the whole
measurement (a stand-in for another user's job). Prints ms per step (median of the
timed steps) for each setting, and the machine and load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STEP = r"""
import json, sys, time, torch
from spoco import SPOCOLoss, EMANet, threads
from spoco.models import UNet2D
from spoco.models.outputs import split_output
from spoco.foreground import pu_foreground_loss
n = threads.set_threads(int(sys.argv[1]))
torch.manual_seed(0)
net = UNet2D(1, 16, f_maps=8, patch_shape=(64, 64), foreground=True)
ema, loss_fn = EMANet(net, momentum=0.995), SPOCOLoss(sparse=True)
opt = torch.optim.Adam(net.parameters(), 1e-3)
x = torch.randn(8, 1, 64, 64)
labels = torch.zeros(8, 64, 64, dtype=torch.long)
labels[:, 10:30, 10:30], labels[:, 35:55, 30:50] = 1, 2
times = []
for i in range(int(sys.argv[2]) + 5):
    t = time.perf_counter()
    f, fg = split_output(net(x), net)
    g = split_output(ema(x), net)[0]
    loss = loss_fn(f, labels, g) + pu_foreground_loss(fg, labels)
    opt.zero_grad(); loss.backward(); opt.step(); ema.update()
    times.append(time.perf_counter() - t)
times = sorted(times[5:])
print(json.dumps({"threads": n, "ms": 1000 * times[len(times) // 2]}))
"""

SPIN = "import time\nt = time.time()\nwhile time.time() - t < 600: pass\n"


def measure(threads: int, policy: str, busy: bool, steps: int) -> float:
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    env.pop("OMP_NUM_THREADS", None)
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        time.sleep(0.2 if busy else 0)
        out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(steps)], env=env, check=True,
                             capture_output=True, text=True).stdout
    finally:
        if spinner is not None:
            spinner.kill()
    return json.loads(out.strip().splitlines()[-1])["ms"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    import platform

    from spoco.threads import available_cpus

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({available_cpus()} available), "
          f"load {os.getloadavg()[0]:.2f}")
    print("| threads | OMP_WAIT_POLICY | alone (ms/step) | beside a busy process (ms/step) |")
    print("|---|---|---|---|")
    for threads in sorted({1, available_cpus()}):
        for policy in ("ACTIVE", "PASSIVE"):
            alone = measure(threads, policy, False, args.steps)
            busy = measure(threads, policy, True, args.steps)
            print(f"| {threads} | {policy} | {alone:.1f} | {busy:.1f} |", flush=True)


if __name__ == "__main__":
    main()
