"""store/staging.Writer: an upload's chunks land in order at their offset, whatever
the kernel writes per call, with the digest over the same bytes and the connection
paused above HIGH queued bytes."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer

from oned_images.store import staging
from oned_images.store.staging import Writer


class Later:
    """A ``run`` (deferToThread's stand-in) that runs the write when told to."""

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, fn, *args):
        d = defer.Deferred()
        self.calls.append((fn, args, d))
        return d

    def finish_all(self) -> None:
        while self.calls:
            fn, args, d = self.calls.pop(0)
            d.callback(fn(*args))


def chunks(n: int, size: int) -> list[bytes]:
    return [bytes([i % 251]) * size + os.urandom(7) for i in range(n)]


def test_chunks_queued_behind_a_write_land_in_order(tmp_path, monkeypatch):
    path = tmp_path / "data"
    path.write_bytes(b"H" * 10)
    real = os.pwritev
    sizes: list[int] = []

    def short_pwritev(fd, buffers, offset):   # the kernel may write less than asked
        sizes.append(len(buffers))
        return real(fd, [memoryview(b"".join(bytes(b) for b in buffers))[:1000]], offset)
    monkeypatch.setattr(staging.os, "pwritev", short_pwritev)
    monkeypatch.setattr(staging, "IOV_MAX", 3)
    run, events = Later(), []
    w = Writer(str(path), 10, 1 << 30, hashlib.sha256(), run,
               lambda: events.append("pause"), lambda: events.append("resume"))
    data = chunks(9, 700)
    w.write(data[0])                 # written at once
    for c in data[1:]:
        w.write(c)                   # queued behind it, written together
    assert len(run.calls) == 1
    run.finish_all()
    done = w.drained(defer.Deferred)
    assert done.called
    w.close_sync(True)
    want = b"".join(data)
    assert path.read_bytes() == b"H" * 10 + want
    assert w.written == len(want) and w.digest.hexdigest() == hashlib.sha256(want).hexdigest()
    assert max(sizes) == 3 and events == []


def test_pause_above_high_and_resume_below_low(tmp_path, monkeypatch):
    path = tmp_path / "data"
    path.write_bytes(b"")
    monkeypatch.setattr(Writer, "HIGH", 1000)
    monkeypatch.setattr(Writer, "LOW", 500)
    run, events = Later(), []
    w = Writer(str(path), 0, 1 << 30, None, run,
               lambda: events.append("pause"), lambda: events.append("resume"))
    data = chunks(4, 400)
    for c in data:
        w.write(c)
    assert events == ["pause"]       # 3 chunks queued behind the first: above HIGH
    run.finish_all()
    assert events == ["pause", "resume"]
    w.close_sync(False)
    assert path.read_bytes() == b"".join(data)


def test_more_than_the_length_is_an_error(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"")
    run = Later()
    w = Writer(str(path), 0, 10, None, run, lambda: None, lambda: None)
    w.write(b"x" * 8)
    w.write(b"y" * 8)
    run.finish_all()
    w.close_sync(False)
    assert w.error == "more bytes than Upload-Length leaves"
    assert path.read_bytes() == b"x" * 8
