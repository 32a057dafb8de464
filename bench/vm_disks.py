"""VM disk snapshot and save-as of a big disk against plain ``cp`` of the same file.

Usage: python -m bench.vm_disks [--size-mb 1024] [--runs 3]

For each TM driver (``shared`` with a raw image: the VM disk is a full copy, a
snapshot a full copy; ``qcow2`` with a qcow2 image: the disk is an overlay, a snapshot
a new layer) a VM is deployed on a dummy host and, ``--runs`` times:
  * one.vm.disksnapshotcreate: call to the VM being RUNNING again;
  * one.vm.disksaveas: call to the new image being READY (cpds: a full copy);
  * ``cp`` of the image file (what a copy of the whole data costs on this disk).
Files live under /var/tmp (the datastores' default RESTRICTED_DIRS holds /tmp).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import SESSION, proxy, start_daemon, summary


def wait(fn, timeout: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


def field(xml: str, tag: str) -> str:
    return xml.split(f"<{tag}>", 1)[1].split("<", 1)[0]


def vm_state(p, oid: int) -> tuple[str, str]:
    doc = p.one.vm.info(SESSION, oid)[1]
    return field(doc, "STATE"), field(doc, "LCM_STATE")


def image_state(p, iid: int) -> str:
    reply = p.one.image.info(SESSION, iid)
    return field(reply[1], "STATE")


def check(reply):
    if not reply[0]:
        raise RuntimeError(reply[1])
    return reply[1]


def make_inputs(base: Path, size_mb: int) -> dict[str, Path]:
    raw = base / "in.raw"
    subprocess.run(["dd", "if=/dev/urandom", f"of={raw}", "bs=1M", f"count={size_mb}",
                    "status=none"], check=True)
    qcow = base / "in.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow)], check=True)
    return {"shared": raw, "qcow2": qcow}


def one_driver(p, d, tm: str, path: Path, runs: int, out: dict) -> None:
    hid = check(p.one.host.allocate(SESSION, f"bh-{tm}", "dummy", "dummy", -1))
    wait(lambda: field(p.one.host.info(SESSION, hid)[1], "STATE") == "2")
    sys_ds = check(p.one.datastore.allocate(
        SESSION, f'NAME="bsys-{tm}"\nTYPE="SYSTEM_DS"\nTM_MAD="{tm}"', -1))
    img_ds = check(p.one.datastore.allocate(
        SESSION, f'NAME="bimg-{tm}"\nDS_MAD="fs"\nTM_MAD="{tm}"', -1))
    wait(lambda: field(p.one.datastore.info(SESSION, img_ds)[1], "FREE_MB") != "0")
    iid = check(p.one.image.allocate(SESSION, f'NAME="b-{tm}"\nPATH="{path}"\nTYPE="OS"',
                                     img_ds))
    wait(lambda: image_state(p, iid) == "1")
    oid = check(p.one.vm.allocate(SESSION, f'CPU="0.1"\nMEMORY="16"\nDISK=[IMAGE_ID={iid}]',
                                  True))
    check(p.one.vm.deploy(SESSION, oid, hid, False, sys_ds, ""))
    wait(lambda: vm_state(p, oid) == ("3", "3"))
    disk = d.var / "datastores" / str(sys_ds) / str(oid) / "disk.0"
    snaps, saves, cps = [], [], []
    for n in range(runs):
        t0 = time.perf_counter()
        check(p.one.vm.disksnapshotcreate(SESSION, oid, 0, f"s{n}"))
        wait(lambda: vm_state(p, oid) == ("3", "3"))
        snaps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        new = check(p.one.vm.disksaveas(SESSION, oid, 0, f"saved-{tm}-{n}", "", -1))
        wait(lambda new=new: image_state(p, new) in ("1", "5"))
        saves.append(time.perf_counter() - t0)
        if image_state(p, new) != "1":
            raise RuntimeError(p.one.image.info(SESSION, new)[1])
        wait(lambda: vm_state(p, oid) == ("3", "3"))
        check(p.one.image.delete(SESSION, new, False))
        # the reference: the whole image data (an overlay disk would be a small file),
        # copied as the scripts copy (no sync either)
        target = disk.with_name(f"cp.{n}")
        t0 = time.perf_counter()
        subprocess.run(["cp", "--", str(path), str(target)], check=True)
        cps.append(time.perf_counter() - t0)
        target.unlink()
    out[tm] = (snaps, saves, cps)
    check(p.one.vm.action(SESSION, "terminate-hard", oid))
    wait(lambda: vm_state(p, oid)[0] == "6")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    base = Path("/var/tmp") / f"oned-images-bench-vmdisks-{os.getpid()}"
    base.mkdir(parents=True)
    d = start_daemon()
    try:
        inputs = make_inputs(base, args.size_mb)
        p = proxy(d)
        out: dict = {}
        for tm in ("shared", "qcow2"):
            one_driver(p, d, tm, inputs[tm], args.runs, out)
        print(f"VM disk of {args.size_mb} MiB, {args.runs} runs (seconds)")
        for tm, (snaps, saves, cps) in out.items():
            kind = "raw" if tm == "shared" else "qcow2"
            print(summary(f"{tm}/{kind} disksnapshotcreate", snaps))
            print(summary(f"{tm}/{kind} disksaveas", saves))
            print(summary(f"{tm}/{kind} cp of the disk", cps))
            print(f"{tm}/{kind} ratios to cp (medians): snapshot "
                  f"{sorted(snaps)[len(snaps) // 2] / sorted(cps)[len(cps) // 2]:.2f}, "
                  f"save-as {sorted(saves)[len(saves) // 2] / sorted(cps)[len(cps) // 2]:.2f}")
    finally:
        d.drop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
