"""Deploy-to-RUNNING of a VM whose disk is a non-persistent raw image of SIZE_MB, on the
`shared` TM (the PROLOG clone copies the file) against a plain `cp` of that file in the
same file system, and on the `qcow2` TM (the clone is an overlay: about constant).

Usage: python -m bench.vm_deploy [SIZE_MB] [ROUNDS]   (default 1024 MiB, 3 rounds; the
source file is written under /var/tmp)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import SESSION, proxy, start_daemon


def call(p, method: str, *args):
    reply = getattr(p, method)(SESSION, *args)
    if not reply[0]:
        raise RuntimeError(f"{method}: {reply[1]}")
    return reply[1]


def state(p, oid: int) -> tuple[int, int]:
    doc = call(p, "one.vm.info", oid)
    return (int(doc.split("<STATE>")[1].split("<")[0]),
            int(doc.split("<LCM_STATE>")[1].split("<")[0]))


def wait(predicate, timeout: float = 1800, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    work = Path("/var/tmp") / f"oned-bench-vmdeploy-{os.getpid()}"
    work.mkdir()
    d = start_daemon()
    try:
        p = proxy(d)
        src = work / "disk.raw"
        subprocess.run(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={size_mb}",
                        "status=none"], check=True)
        hid = call(p, "one.host.allocate", "bench-host", "dummy", "dummy", -1)
        wait(lambda: "<STATE>2</STATE>" in call(p, "one.host.info", hid))
        setups = {}
        for tm in ("shared", "qcow2"):
            sys_ds = call(p, "one.datastore.allocate",
                          f'NAME="sys-{tm}"\nTYPE="SYSTEM_DS"\nTM_MAD="{tm}"', -1)
            img_ds = call(p, "one.datastore.allocate",
                          f'NAME="img-{tm}"\nDS_MAD="fs"\nTM_MAD="{tm}"', -1)
            wait(lambda ds=img_ds: "<FREE_MB>0</FREE_MB>" not in
                 call(p, "one.datastore.info", ds))
            iid = call(p, "one.image.allocate", f'NAME="img-{tm}"\nPATH="{src}"\nTYPE="OS"',
                       img_ds)
            wait(lambda i=iid: "<STATE>1</STATE>" in call(p, "one.image.info", i), 1800, 0.1)
            setups[tm] = (sys_ds, iid)
        times: dict[str, list[float]] = {"cp": [], "cp+sync": [], "shared": [], "qcow2": []}
        target = d.var / "datastores" / str(setups["shared"][0])
        target.mkdir(parents=True, exist_ok=True)
        for _ in range(rounds):
            # the references: cp as it is, and cp with the one fdatasync the TM copy
            # does before its rename (the data on disk, not only in the page cache)
            for ref, cmds in (("cp", [["cp", "--", str(src), str(target / "plain")]]),
                              ("cp+sync", [["cp", "--", str(src), str(target / "plain")],
                                           ["sync", "--data", str(target / "plain")]])):
                t0 = time.perf_counter()
                for cmd in cmds:
                    subprocess.run(cmd, check=True)
                times[ref].append(time.perf_counter() - t0)
                (target / "plain").unlink()
            for tm, (sys_ds, iid) in setups.items():
                oid = call(p, "one.vm.allocate",
                           f'CPU="0.1"\nMEMORY="16"\nDISK=[IMAGE_ID="{iid}"]', True)
                t0 = time.perf_counter()
                call(p, "one.vm.deploy", oid, hid, False, sys_ds, "")
                wait(lambda o=oid: state(p, o) == (3, 3))
                times[tm].append(time.perf_counter() - t0)
                call(p, "one.vm.action", "terminate", oid)
                wait(lambda o=oid: state(p, o)[0] == 6)
        cp = statistics.median(times["cp"])
        print(f"VM deploy-to-RUNNING with a {size_mb} MiB raw disk, median of {rounds}:")
        print(f"  cp of the file:  {cp:.3f} s")
        print(f"  cp + fdatasync:  {statistics.median(times['cp+sync']):.3f} s")
        for tm in ("shared", "qcow2"):
            t = statistics.median(times[tm])
            print(f"  TM {tm:7s}:     {t:.3f} s  (ratio to cp {t / cp:.2f})")
    finally:
        d.drop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
