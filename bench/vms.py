"""Virtual machines at scale: one.template.instantiate throughput as the VM pool grows,
one.vmpool.info of the whole pool and of one page of 200.

Usage: python -m bench.vms [--vms 10000] [--window 1000] [--hold] [--disks "DISK=[...]"]
                          [--image-disks 2] [--users-of-one 500]
  * instantiate of one template, sequentially, in windows of ``--window`` VMs: each
    window runs half its calls on a kept-alive connection and half with a new
    connection per call, and prints both rates (VMs/s), so a rate that falls as the
    pool grows shows;
  * one.vmpool.info(-2, -1, -1, -2) (every VM, short form) and a page of 200
    (-2, 0, -200, -2) at the final pool size, in both connection modes.
  * ``--image-disks N``: the template gets N DISKs on non-persistent images of a dummy
    datastore (each VM acquires them: RUNNING_VMS and <VMS> of those images grow);
  * ``--users-of-one N``: first, one.image.info of an image that N VMs use (its <VMS>
    list) against an unused image, in both connection modes.
Without ``--hold`` the VMs are PENDING and the scheduler (no host here) writes each
one's SCHED_MESSAGE once, as oned does: that write is part of the measured load.
"""

from __future__ import annotations

import argparse
import re
import time

from bench.client import Client, Endpoint
from bench.common import SESSION, start_daemon, summary


def instantiate_window(clients: dict[str, Client], tid: int, count: int, hold: bool,
                       rates: dict[str, float], cpu: dict[str, float]) -> None:
    """Rates in VMs/s and the daemon's CPU milliseconds per VM (the second holds up on a
    busy machine, where wall-clock rates swing with the other processes)."""
    for mode, c in clients.items():
        n = count // len(clients)
        req = c.request("one.template.instantiate", tid, "", hold, "", False)
        c0 = c.endpoint.cpu_seconds() or 0.0
        t0 = time.perf_counter()
        for _ in range(n):
            reply = c.send(req)
            if b"<boolean>1</boolean>" not in reply:
                raise RuntimeError(reply[:300])
        rates[mode] = n / (time.perf_counter() - t0)
        cpu[mode] = ((c.endpoint.cpu_seconds() or 0.0) - c0) * 1000 / n


def listing(c: Client, args: tuple, runs: int) -> tuple[list[float], int]:
    req = c.request("one.vmpool.info", *args)
    size = len(c.send(req))
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        c.send(req)
        samples.append(time.perf_counter() - t0)
    return samples, size


def image(c: Client, ds: int, name: str) -> int:
    """A READY non-persistent image registered by SOURCE (no driver copy)."""
    reply = c.call("one.image.allocate",
                   f'NAME="{name}"\nSOURCE="/var/tmp/{name}"\nFORMAT="raw"\nSIZE="1"', ds)
    if not reply[0]:
        raise RuntimeError(reply)
    return reply[1]


def image_info(clients: dict[str, Client], used: int, unused: int, vms: int,
               hold: bool) -> None:
    """one.image.info of an image ``vms`` VMs use against an unused one."""
    c = clients["keep"]
    tid = c.call("one.template.allocate",
                 f'NAME="users"\nCPU="0.1"\nMEMORY="64"\nDISK=[IMAGE_ID={used}]')[1]
    req = c.request("one.template.instantiate", tid, "", hold, "", False)
    for _ in range(vms):
        reply = c.send(req)
        if b"<boolean>1</boolean>" not in reply:
            raise RuntimeError(reply[:300])
    for mode, cl in clients.items():
        for iid, what in ((used, f"used by {vms} VMs"), (unused, "unused")):
            req = cl.request("one.image.info", iid)
            size = len(cl.send(req))
            samples = []
            for _ in range(300):
                t0 = time.perf_counter()
                cl.send(req)
                samples.append(time.perf_counter() - t0)
            print(summary(f"image.info {what} ({size / 1e3:.1f} kB) {mode}", samples))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--disks", default="", help="DISK vectors added to the template")
    ap.add_argument("--image-disks", type=int, default=0,
                    help="DISKs on images of a dummy datastore in the template")
    ap.add_argument("--users-of-one", type=int, default=0,
                    help="image.info of an image this many VMs use, against an unused one")
    args = ap.parse_args()
    d = start_daemon()
    try:
        ep = Endpoint(d.url, SESSION, d.proc.pid)
        clients = {"keep": Client(ep, "keep"), "new": Client(ep, "new")}
        keep = clients["keep"]
        disks = args.disks
        if args.image_disks or args.users_of_one:
            ds = keep.call("one.datastore.allocate",
                           'NAME="bench-ds"\nDS_MAD="dummy"\nTM_MAD="dummy"', -1)[1]
            info = keep.request("one.datastore.info", ds)
            while re.search(rb"&lt;FREE_MB&gt;0&lt;", keep.send(info)):
                time.sleep(0.1)  # its first monitor is running
            images = [image(keep, ds, f"bench-{n}") for n in range(args.image_disks + 2)]
            disks += "".join(f"\nDISK=[IMAGE_ID={i}]" for i in images[:args.image_disks])
            if args.users_of_one:
                used, unused = images[-2:]
                image_info(clients, used, unused, args.users_of_one, args.hold)
        tid = keep.call(
            "one.template.allocate",
            f'NAME="bench"\nCPU="0.1"\nMEMORY="64"\nDESCRIPTION="bench"\n{disks}')[1]
        print(f"instantiate (hold={args.hold}), VMs/s (daemon CPU per VM) per window of "
              f"{args.window}:")
        made = 0
        while made < args.vms:
            rates: dict[str, float] = {}
            cpu: dict[str, float] = {}
            instantiate_window(clients, tid, args.window, args.hold, rates, cpu)
            made += args.window
            print(f"  {made - args.window:>6}-{made:<6} keep {rates['keep']:7.1f} "
                  f"({cpu['keep']:.2f} ms CPU/VM)  new {rates['new']:7.1f} "
                  f"({cpu['new']:.2f} ms CPU/VM)", flush=True)
        time.sleep(2)  # let the scheduler's passes settle before listing
        for mode, c in clients.items():
            full, size = listing(c, (-2, -1, -1, -2), 10)
            print(summary(f"vmpool.info all {made} VMs ({size / 1e6:.1f} MB) {mode}", full))
            page, size = listing(c, (-2, 0, -200, -2), 100)
            print(summary(f"vmpool.info page of 200 ({size / 1e3:.0f} kB) {mode}", page))
        print(f"daemon RSS {ep.rss_mb():.0f} MB")
    finally:
        for c in clients.values():
            c.close()
        d.stop()
        d.drop()


if __name__ == "__main__":
    main()
