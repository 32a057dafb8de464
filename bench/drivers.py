"""Time fs driver actions on their own (no daemon): the part of an image's copy that
is the driver's, start-up included.

Usage: python -m bench.drivers [--runs N] [--mb 1,100] [--remotes DIR]

stat and cp of 1 and 100 MiB raw files, monitor, mkfs of an empty 1 GiB image (raw and
ext4).

Each action runs as the daemon runs it (argv ``<action> <id>``, the base64 document on
stdin, the daemon's PATH), from a source file in the page cache; medians and minimums
over --runs.  ``plain cp`` is coreutils cp of the same file (no fsync), for scale.
"""

from __future__ import annotations

import argparse
import base64
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOT = Path(__file__).resolve().parents[1] / "drivers"


def document(base: Path, path: str = "", size: int = 1024, fs: str = "") -> bytes:
    xml = (f"<DS_DRIVER_ACTION_DATA><IMAGE><ID>7</ID><PATH><![CDATA[{path}]]></PATH>"
           f"<TYPE>0</TYPE><SIZE>{size}</SIZE><FORMAT>raw</FORMAT><FS>{fs}</FS></IMAGE>"
           f"<DATASTORE><ID>1</ID><BASE_PATH>{base}</BASE_PATH><TYPE>0</TYPE><TEMPLATE>"
           "<DRIVER>raw</DRIVER><SAFE_DIRS>/var/tmp</SAFE_DIRS></TEMPLATE></DATASTORE>"
           "</DS_DRIVER_ACTION_DATA>")
    return base64.b64encode(xml.encode())


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def timed(argv: list[str], stdin: bytes | None, env: dict, runs: int,
          after=None) -> tuple[list[float], list[float]]:
    """Wall times and CPU times (the action's processes together: on a shared machine
    the CPU time is the steadier figure)."""
    out, cpu = [], []
    for _ in range(runs):
        c0, t0 = _children_cpu(), time.perf_counter()
        res = subprocess.run(argv, input=stdin, capture_output=True, env=env, check=False)
        out.append(time.perf_counter() - t0)
        cpu.append(_children_cpu() - c0)
        assert res.returncode == 0, res.stderr.decode()
        if after:
            after(res.stdout.decode())
    return out, cpu


def show(name: str, samples: tuple[list[float], list[float]]) -> None:
    wall, cpu = samples
    print(f"{name:<28} n={len(wall):<3} p50={statistics.median(wall) * 1e3:7.1f} ms  "
          f"min={min(wall) * 1e3:7.1f} ms  cpu p50={statistics.median(cpu) * 1e3:7.1f} ms",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--mb", default="1,100")
    ap.add_argument("--remotes", default=str(ROOT), help="the drivers directory")
    args = ap.parse_args()
    fs = Path(args.remotes) / "datastore" / "fs"
    work = Path(tempfile.mkdtemp(prefix="oned-bench-drv-", dir="/var/tmp"))
    base = work / "ds"
    base.mkdir()
    tmpdir = work / "tmp"
    tmpdir.mkdir()
    env = {"PATH": PATH, "HOME": str(work), "LANG": "C", "LC_ALL": "C", "TMPDIR": str(tmpdir),
           "ONED_URL_POLICY": "open"}

    def drop(out: str) -> None:
        Path(out.split()[0]).unlink()

    try:
        for mb in (int(x) for x in args.mb.split(",")):
            src = work / f"src-{mb}.raw"
            subprocess.run(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={mb}",
                            "status=none"], check=True)
            src.read_bytes()
            doc = document(base, str(src))
            show(f"stat {mb} MiB", timed([str(fs / "stat"), "7"], doc, env, args.runs))
            show(f"cp {mb} MiB", timed([str(fs / "cp"), "7"], doc, env, args.runs, drop))
            show(f"plain cp {mb} MiB", timed(["cp", str(src), str(base / "plain")], None, env,
                                             args.runs))
            show(f"plain cp + sync {mb} MiB",
                 timed(["dd", f"if={src}", f"of={base / 'plain'}", "bs=1M", "conv=fsync",
                        "status=none"], None, env, args.runs))
        show("monitor", timed([str(fs / "monitor"), "1"], document(base), env, args.runs))
        for fs_type in ("", "ext4"):
            show(f"mkfs 1 GiB {fs_type or 'raw'}",
                 timed([str(fs / "mkfs"), "7"], document(base, fs=fs_type), env, args.runs,
                       lambda out: Path(out.strip()).unlink()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
