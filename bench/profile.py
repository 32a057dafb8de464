"""Where a daemon's time goes: py-spy on a daemon of its own while one client calls a
method on a new connection per call; the top frames by self and inclusive time.

Usage: python -m bench.profile one.image.info 0   (needs py-spy on PATH)
"""

import collections
import subprocess
import sys
import threading
import time

from bench.client import Client, Endpoint
from bench.common import start_daemon
from tests.support.daemon import ADMIN_PASSWORD  # noqa: E402 (bench.common sets the path)

method = sys.argv[1]
args = tuple(int(a) if a.lstrip('-').isdigit() else a for a in sys.argv[2:])
d = start_daemon()
try:
    ep = Endpoint(d.url, "oneadmin:" + ADMIN_PASSWORD)
    c0 = Client(ep, "keep")
    for i in range(200):
        c0.call("one.image.allocate", f'NAME="p{i}"\nSOURCE="/x/{i}"\nFORMAT="raw"\nSIZE="1"', 1)
    c0.close()
    stop = threading.Event()
    def load():
        c = Client(ep, "new")
        req = c.request(method, *args)
        while not stop.is_set():
            c.send(req)
    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.5)
    out = f"/tmp/prof-{method}.txt"
    subprocess.run(["py-spy", "record", "-r", "500", "-d", "8", "--format", "raw", "-o", out,
                    "-p", str(d.proc.pid)], check=True, capture_output=True)
    stop.set()
    t.join()
    leaf, incl, total = collections.Counter(), collections.Counter(), 0
    for line in open(out):
        stack, _, n = line.rstrip().rpartition(" ")
        n = int(n)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"{method}: {total} samples")
    print("self:")
    for f, n in leaf.most_common(8):
        print(f"  {100*n/total:5.1f}%  {f}")
    print("inclusive (below the reactor loop):")
    for f, n in incl.most_common(30)[:30]:
        if 100*n/total < 99:
            print(f"  {100*n/total:5.1f}%  {f}")
finally:
    d.stop()
