"""Copy figures of two checkouts side by side, interleaved, so both see the same load.

Usage: python -m bench.copy_ab OTHER_CHECKOUT [--runs 20]

On a shared machine a figure taken a minute later is taken under another load; here
each round runs every figure on a daemon of OTHER_CHECKOUT and on one of this checkout,
in alternating order: 1 MiB and 100 MiB from PATH to READY, an empty 1 GiB datablock
raw and ext4 (bench.figures' method: allocate, then one.image.info every millisecond
on a kept-alive connection), and coreutils ``cp`` of the 100 MiB file for scale.
Besides wall times, the CPU each daemon and its driver processes spent per image (from
/proc: the daemon's own time and its reaped children's, a datastore monitor counted
with the image it ended beside; means, as /proc counts in clock ticks), which the
load changes little.  Wall times: medians and minimums over --runs rounds.  OTHER_CHECKOUT is a source tree
of oned-images (``git worktree add`` or ``git archive REV | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.client import Client, Endpoint
from bench.figures import wait_ready

HERE = Path(__file__).resolve().parents[1]
FIGURES = {
    "1 MiB from PATH to READY": 'PATH="{src1}"',
    "100 MiB from PATH to READY": 'PATH="{src100}"',
    "1 GiB datablock raw": 'TYPE="DATABLOCK"\nSIZE="1024"',
    "1 GiB datablock ext4": 'TYPE="DATABLOCK"\nSIZE="1024"\nFS="ext4"',
}


def daemon_module(tree: Path):
    """The test harness of ``tree`` (its Daemon starts that tree's code and drivers)."""
    name = f"oned_bench_harness_{abs(hash(str(tree)))}"
    spec = importlib.util.spec_from_file_location(name, tree / "tests/support/daemon.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cpu(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its reaped children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / tick,
            (int(fields[13]) + int(fields[14])) / tick)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("other", type=Path)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    trees = {"other": args.other.resolve(), "this": HERE}
    work = Path(tempfile.mkdtemp(prefix="oned-bench-ab-", dir="/var/tmp"))
    daemons, clients = {}, {}
    try:
        for key, tree in trees.items():
            harness = daemon_module(tree)
            d = harness.Daemon(work / key, extra_config='LOG = [ SYSTEM = "std", '
                               'DEBUG_LEVEL = 1 ]\n').start()
            daemons[key] = d
            clients[key] = Client(Endpoint(d.url, f"oneadmin:{harness.ADMIN_PASSWORD}",
                                           d.proc.pid), "keep")
        srcs = {}
        for mb in (1, 100):
            srcs[f"src{mb}"] = work / f"src-{mb}.raw"
            subprocess.run(["dd", "if=/dev/urandom", f"of={srcs[f'src{mb}']}", "bs=1M",
                            f"count={mb}", "status=none"], check=True)
            srcs[f"src{mb}"].read_bytes()
        wall: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[tuple[float, float]]] = {}
        plain: list[float] = []
        for rnd in range(args.runs + 1):   # round 0 warms up
            t0 = time.perf_counter()
            subprocess.run(["cp", str(srcs["src100"]), str(work / "plain")], check=True)
            if rnd:
                plain.append(time.perf_counter() - t0)
            (work / "plain").unlink()
            order = list(clients) if rnd % 2 else list(reversed(clients))
            for key in order:
                c, pid = clients[key], daemons[key].proc.pid
                for n, (figure, template) in enumerate(FIGURES.items()):
                    own0, kids0 = cpu(pid)
                    t0 = time.perf_counter()
                    res = c.call("one.image.allocate", f'NAME="ab{rnd}-{n}"\n'
                                 + template.format(**srcs), 1)
                    assert res[0], res
                    wait_ready(c, res[1])
                    took = time.perf_counter() - t0
                    own1, kids1 = cpu(pid)
                    if rnd:
                        wall.setdefault((key, figure), []).append(took)
                        cpus.setdefault((key, figure), []).append((own1 - own0,
                                                                   kids1 - kids0))
    finally:
        for d in daemons.values():
            d.drop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.runs} interleaved rounds; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for figure in FIGURES:
        for key in trees:
            w = wall[(key, figure)]
            own = statistics.mean(x[0] for x in cpus[(key, figure)])
            kids = statistics.mean(x[1] for x in cpus[(key, figure)])
            print(f"{figure:<28} {key:<6} p50={statistics.median(w) * 1e3:7.1f} ms  "
                  f"min={min(w) * 1e3:7.1f} ms  cpu mean: daemon {own * 1e3:5.1f} ms, "
                  f"drivers {kids * 1e3:5.1f} ms")
    print(f"{'plain cp 100 MiB':<35} p50={statistics.median(plain) * 1e3:7.1f} ms  "
          f"min={min(plain) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
