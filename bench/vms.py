"""Virtual machines at scale: one.template.instantiate throughput as the VM pool grows,
one.vmpool.info of the whole pool and of one page of 200.

Usage: python -m bench.vms [--vms 10000] [--window 1000] [--hold] [--disks "DISK=[...]"]
  * instantiate of one template, sequentially, in windows of ``--window`` VMs: each
    window runs half its calls on a kept-alive connection and half with a new
    connection per call, and prints both rates (VMs/s), so a rate that falls as the
    pool grows shows;
  * one.vmpool.info(-2, -1, -1, -2) (every VM, short form) and a page of 200
    (-2, 0, -200, -2) at the final pool size, in both connection modes.
Without ``--hold`` the VMs are PENDING and the scheduler (no host here) writes each
one's SCHED_MESSAGE once, as oned does: that write is part of the measured load.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--disks", default="", help="DISK vectors added to the template")
    args = ap.parse_args()
    d = start_daemon()
    try:
        ep = Endpoint(d.url, SESSION, d.proc.pid)
        clients = {"keep": Client(ep, "keep"), "new": Client(ep, "new")}
        tid = clients["keep"].call(
            "one.template.allocate",
            f'NAME="bench"\nCPU="0.1"\nMEMORY="64"\nDESCRIPTION="bench"\n{args.disks}')[1]
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
