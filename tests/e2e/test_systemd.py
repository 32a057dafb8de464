"""Running under systemd: the real daemon notifies a datagram socket the test binds
(as systemd does for Type=notify), and the shipped unit passes systemd-analyze."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.daemon import REPO, wait_for
from tests.support.seed import call


@dataclass
class Received:
    text: str
    port_file_existed: bool
    #: for READY=1: could a TCP connection be made to the port at that moment?
    port_answered: bool | None = None


@dataclass
class NotifySocket:
    """A bound SOCK_DGRAM socket in the abstract namespace, read by a thread."""

    port_file: Path
    address: str = field(default_factory=lambda: f"@oned-images-test-{uuid.uuid4().hex}")
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.1)
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode()
            got = Received(text, self.port_file.exists())
            if "READY=1" in text.split("\n"):
                got.port_answered = self._port_answers()
            self.messages.append(got)

    def _port_answers(self) -> bool:
        try:
            port = int(self.port_file.read_text())
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return True
        except (OSError, ValueError):
            return False

    def texts(self) -> list[str]:
        return [m.text for m in self.messages]

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


def test_ready_after_bind_status_watchdog_and_stopping(fresh_daemon):
    d = fresh_daemon(start=False)
    notify = NotifySocket(d.tmp / "port")
    d.env.update(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="200000")
    try:
        d.start()
        assert call(d, "one.system.version")[0] is True
        ready = wait_for(lambda: [m for m in notify.messages if "READY=1" in m.text])
        assert len(ready) == 1
        # READY=1 came once the port was bound (its file written, connections accepted)
        assert ready[0].port_file_existed and ready[0].port_answered
        pid = d.proc.pid
        assert ready[0].text == (f"READY=1\nSTATUS=Listening on http://127.0.0.1:{d.port}/RPC2"
                                 f"\nMAINPID={pid}")
        # before it: the start-up phase, and nothing else but watchdog pings
        first = notify.texts().index(ready[0].text)
        before = [t for t in notify.texts()[:first] if t != "WATCHDOG=1"]
        assert before == ["STATUS=Reconciling interrupted driver actions, monitoring "
                          "datastores"]
        # WATCHDOG_USEC=200000: a ping every 0.1 s, which goes on after READY
        seen = len(notify.messages)
        wait_for(lambda: notify.texts()[seen:].count("WATCHDOG=1") >= 3, timeout=5)
        d.stop()
        texts = notify.texts()
        assert texts[-1] == ("STOPPING=1\nSTATUS=Stopping: ending driver actions, closing "
                             "the database")
        # the pings end with the stop
        count = len(notify.messages)
        time.sleep(0.5)
        assert len(notify.messages) == count
    finally:
        notify.close()


def test_unreachable_notify_socket_is_logged_once(fresh_daemon, tmp_path):
    """A wrong NOTIFY_SOCKET does not stop the daemon; the watchdog pings that fail
    every 0.1 s are logged once, not every time."""
    missing = tmp_path / "no-such-socket"
    d = fresh_daemon(env={"NOTIFY_SOCKET": str(missing), "WATCHDOG_USEC": "200000"})
    assert call(d, "one.system.version")[0] is True
    time.sleep(0.5)
    lines = [line for line in d.log_text().splitlines() if "sd_notify" in line]
    assert len(lines) == 1, lines
    assert f"sd_notify to {missing} failed: [Errno 2] No such file or directory" in lines[0]


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO / "etc" / "oned-images.service").read_text()
    assert "ExecStart=/usr/local/bin/oned-images serve --config /etc/one/oned-images.conf" \
        in unit
    # verify checks that ExecStart's program exists: point it at one that does
    program = shutil.which("oned-images") or "/bin/true"
    copy = tmp_path / "oned-images.service"
    copy.write_text(unit.replace("/usr/local/bin/oned-images", os.path.realpath(program)))
    out = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                         timeout=60)
    # unknown keys and bad values are only warnings: require silence
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


SANDBOX = """#!/bin/sh
# What the unit's hardening does to the file system and privileges, in a private mount
# namespace: read-only system and home directories, /tmp and /var/tmp read-only (no
# PrivateTmp), the state directory writable, no new privileges, no capabilities.
set -e
mount --make-rprivate /
for dir in /usr /etc /opt /home /root /tmp /var/tmp; do
    [ -d "$dir" ] || continue
    mount --bind "$dir" "$dir"
    mount -o remount,bind,ro "$dir"
done
mount --bind "$STATE_DIR" "$STATE_DIR"
mount -o remount,bind,rw "$STATE_DIR"
exec setpriv --no-new-privs --bounding-set=-all --inh-caps=-all "$@"
"""


def _can_sandbox() -> bool:
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount --bind /usr /usr && mount -o remount,bind,ro /usr"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
def test_fs_driver_works_under_the_units_hardening(fresh_daemon, tmp_path, monkeypatch):
    """ProtectSystem=strict + ReadWritePaths (state dir), ProtectHome=read-only, no
    PrivateTmp (a read-only /var/tmp to import from), TMPDIR in the state directory,
    NoNewPrivileges, no capabilities: copy, clone, mkfs, an http download and rm work."""
    import functools
    import http.server

    if not _can_sandbox():
        pytest.skip("needs unshare -m and setpriv (root in a mount namespace)")
    if not (shutil.which("qemu-img") and shutil.which("mkfs.ext4")):
        pytest.skip("needs qemu-img and mkfs.ext4")
    inputs = Path("/var/tmp") / f"oned-images-sandbox-{os.getpid()}"
    inputs.mkdir(exist_ok=True)
    raw = inputs / "disk.raw"
    raw.write_bytes(b"\x01" * 4096 + b"\x00" * (2 * 1024 * 1024 - 4096))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(inputs)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state_dir = tmp_path / "d0"
    (state_dir / "tmp").mkdir(parents=True)
    sandbox = tmp_path / "sandbox.sh"
    sandbox.write_text(SANDBOX)
    sandbox.chmod(0o755)
    d = fresh_daemon(start=False)
    d.env.update(STATE_DIR=str(state_dir), TMPDIR=str(state_dir / "tmp"))
    real_popen = subprocess.Popen
    try:
        with monkeypatch.context() as patch:
            patch.setattr(subprocess, "Popen", lambda argv, **kw: real_popen(
                ["unshare", "-m", str(sandbox), *argv], **kw))
            d.start()
        # the daemon really runs confined (unshare, sh and setpriv exec'd into it)
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status and "CapBnd:\t0000000000000000" in status
        mounts = [line.split() for line in
                  Path(f"/proc/{d.proc.pid}/mountinfo").read_text().splitlines()]
        options = {m[4]: m[5].split(",") for m in mounts}
        assert "ro" in options["/var/tmp"] and "ro" in options["/usr"]
        assert "rw" in options[str(state_dir)]
        one = d.client()

        def settled(iid: int):
            return wait_for(lambda: (lambda img: img if img.STATE != 4 else None)(
                one.image.info(iid)), timeout=60)

        copy = settled(one.image.allocate(f'NAME="c"\nPATH="{raw}"', 1))
        assert (copy.STATE, copy.FORMAT, copy.SIZE) == (1, "raw", 2), copy.TEMPLATE
        assert Path(copy.SOURCE).read_bytes() == raw.read_bytes()
        url = f"http://127.0.0.1:{server.server_address[1]}/disk.raw"
        download = settled(one.image.allocate(f'NAME="h"\nPATH="{url}"', 1))
        assert download.STATE == 1, download.TEMPLATE
        assert Path(download.SOURCE).read_bytes() == raw.read_bytes()
        clone = settled(one.image.clone(copy.ID, "c2"))
        assert clone.STATE == 1, clone.TEMPLATE
        blank = settled(one.image.allocate('NAME="b"\nTYPE="DATABLOCK"\nSIZE="8"\n'
                                           'FS="ext4"', 1))
        assert blank.STATE == 1, blank.TEMPLATE
        for img in (copy, download, clone, blank):
            if img is copy:
                wait_for(lambda: one.image.info(copy.ID).STATE == 1)
            one.image.delete(img.ID)
        for img in (copy, download, clone, blank):
            wait_for(lambda img=img: not Path(img.SOURCE).exists(), timeout=60)
        # scripts (the monitors the removals ask for too) clean their TMPDIR files up
        wait_for(lambda: list((state_dir / "tmp").iterdir()) == [], timeout=30)
    finally:
        server.shutdown()
        shutil.rmtree(inputs, ignore_errors=True)
