"""Where uploads are staged: one data file and one JSON sidecar per upload.

STAGING/<id>.bin holds the bytes received (its size is the upload's offset: a
write is appended before the offset is trusted, so a crash can only lose what the
client will send again); STAGING/<id>.json holds what the upload was created with
(owner, length, template, datastore, times, the image once allocated).  A sidecar
per upload rather than a table keeps the database schema as it is.  Every call
here touches the disk: callers run them on a thread (deferToThread), never on the
reactor.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass, field

from oned_images.template import Template

ID = re.compile(r"^[0-9a-f]{32}$")
#: mode of staged files: the daemon's only (the driver reads them as the same user)
FILE_MODE = 0o600


@dataclass
class Upload:
    id: str
    uid: int
    length: int
    ds_id: int
    #: the image template (NAME, TYPE, ..., PATH = the data file) allocate gets
    template: str
    #: MB charged against the datastore at allocation (ceil of length)
    size_mb: int
    #: the Upload-Metadata header as sent (tus: returned by HEAD)
    metadata: str
    created: float
    touched: float
    image_id: int = -1
    #: bytes stored (not in the sidecar: the data file's size)
    offset: int = field(default=0, compare=False)

    def record(self) -> dict:
        data = asdict(self)
        data.pop("offset")
        return data


class Busy(Exception):
    """Another worker is writing to the upload (it holds the data file's lock)."""


class Staging:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def data_path(self, upload_id: str) -> str:
        return os.path.join(self.directory, f"{upload_id}.bin")

    def _record_path(self, upload_id: str) -> str:
        return os.path.join(self.directory, f"{upload_id}.json")

    def prepare(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def create(self, upload: Upload) -> None:
        fd = os.open(self.data_path(upload.id),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.close(fd)
        self.save(upload)

    def save(self, upload: Upload) -> None:
        """Write the sidecar atomically (a crash leaves the old or the new one)."""
        path = self._record_path(upload.id)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(upload.record(), out)
        os.replace(tmp, path)

    def remove_data(self, upload_id: str) -> None:
        try:
            os.unlink(self.data_path(upload_id))
        except FileNotFoundError:
            pass

    def remove(self, upload_id: str) -> None:
        self.remove_data(upload_id)
        self.remove_record(upload_id)

    def remove_record(self, upload_id: str) -> None:
        for path in (self._record_path(upload_id), self._record_path(upload_id) + ".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def truncate(self, upload_id: str, offset: int) -> None:
        os.truncate(self.data_path(upload_id), offset)

    # -------------------------------------------- between the workers of one parent
    def has(self, upload_id: str) -> bool:
        return os.path.exists(self._record_path(upload_id))

    def load(self, upload_id: str) -> Upload | None:
        """The upload as its files hold it now (offset: the data file's size); None: not
        staged here (or half gone)."""
        try:
            with open(self._record_path(upload_id), encoding="utf-8") as src:
                upload = Upload(**json.load(src))
        except (OSError, ValueError, TypeError):
            return None
        try:
            upload.offset = os.stat(self.data_path(upload_id)).st_size
        except FileNotFoundError:
            if upload.image_id < 0:
                return None
            upload.offset = upload.length
        return upload

    def lock(self, upload_id: str) -> int | None:
        """An exclusive lock on the upload's data file, held by the returned descriptor
        until it is closed: the one writer among the workers.  None: not staged here
        (any more); raises Busy: another worker holds it."""
        try:
            fd = os.open(self.data_path(upload_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(upload_id) from None
        if not self.has(upload_id):  # moved away before the lock was ours
            os.close(fd)
            return None
        return fd

    def take(self, sibling: Staging, upload_id: str) -> int | None:
        """Move a sibling worker's idle upload here, under its lock (returned, held):
        the data file is linked here, the sidecar renamed (so it is always in exactly
        one directory), then the sibling's link removed; a crash in between leaves a
        data file without sidecar, which that directory's next start removes, and the
        bytes in the other.  PATH in the template is renamed with it.  None: gone."""
        fd = sibling.lock(upload_id)
        if fd is None:
            return None
        try:
            mine = self.data_path(upload_id)
            try:
                os.unlink(mine)  # a leftover of a crash here
            except FileNotFoundError:
                pass
            os.link(sibling.data_path(upload_id), mine)
            os.replace(sibling._record_path(upload_id), self._record_path(upload_id))
            os.unlink(sibling.data_path(upload_id))
            upload = self.load(upload_id)
            if upload is not None:
                tmpl = Template.parse(upload.template)
                tmpl.set("PATH", mine)
                upload.template = tmpl.to_text()
                self.save(upload)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def load_all(self) -> tuple[list[Upload], list[str]]:
        """(uploads found, names removed): a sidecar that cannot be read, and a data
        file without a sidecar, are removed (the daemon stopped between the two)."""
        uploads, removed = [], []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return [], []
        ids = {n.split(".", 1)[0] for n in names}
        for upload_id in sorted(ids):
            if not ID.match(upload_id):
                continue
            try:
                with open(self._record_path(upload_id), encoding="utf-8") as src:
                    upload = Upload(**json.load(src))
            except (OSError, ValueError, TypeError):
                self.remove(upload_id)
                removed.append(upload_id)
                continue
            try:
                upload.offset = os.stat(self.data_path(upload_id)).st_size
            except FileNotFoundError:
                upload.offset = upload.length if upload.image_id >= 0 else 0
                if upload.image_id < 0:
                    self.remove(upload_id)
                    removed.append(upload_id)
                    continue
            uploads.append(upload)
        return uploads, removed


#: most buffers one pwritev takes
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


class Writer:
    """Appends one PATCH body to a data file on a thread, one write at a time.

    Chunks are queued as they arrive; the queue's size is bounded by pausing the
    connection (``pause``/``resume``) above HIGH bytes, so a fast client and a slow
    disk cost at most HIGH bytes of memory per upload and the reactor never waits
    on the disk.  ``digest`` (hashlib object) sees the bytes in order.
    """

    HIGH = 8 << 20
    LOW = 2 << 20

    def __init__(self, path: str, offset: int, limit: int, digest, run, pause, resume) -> None:
        self.path, self.offset, self.limit, self.digest = path, offset, limit, digest
        self.run, self.pause, self.resume = run, pause, resume
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.busy = False
        self.paused = False
        self.written = 0
        self.received = 0
        self.error: str | None = None
        self._idle: list = []
        self._fd: int | None = None

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        self.received += len(data)
        if self.received > self.limit:
            self.error = "more bytes than Upload-Length leaves"
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if not self.busy:
            self._kick()
        if self.pending_bytes > self.HIGH and not self.paused:
            self.paused = True
            self.pause()

    def _kick(self) -> None:
        # the queued chunks go to the thread as they are: joining them here copied
        # every byte of an upload once more, on the reactor's thread (py-spy: about a
        # sixth of its time in a 2 GiB upload)
        chunks = self.pending
        self.pending, self.pending_bytes, self.busy = [], 0, True
        d = self.run(self._write_sync, chunks)
        d.addCallbacks(self._done, self._failed)

    def _write_sync(self, chunks: list[bytes]) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        off = start = self.offset + self.written
        views = [memoryview(c) for c in chunks if c]
        while views:
            n = os.pwritev(self._fd, views[:IOV_MAX], off)
            off += n
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if n:
                views[0] = views[0][n:]
        if self.digest is not None:
            for c in chunks:
                self.digest.update(c)
        return off - start

    def _done(self, n: int) -> None:
        self.written += n
        self.busy = False
        if self.pending:
            self._kick()
        elif self.paused and self.pending_bytes < self.LOW:
            self.paused = False
            self.resume()
        self._maybe_idle()

    def _failed(self, failure) -> None:
        self.busy = False
        self.error = str(failure.value)
        self.pending, self.pending_bytes = [], 0
        if self.paused:
            self.paused = False
            self.resume()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.busy and not self.pending:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def drained(self, deferred_factory):
        """A Deferred firing once everything queued is on disk (then the file is closed
        on a thread by the caller through close_sync)."""
        d = deferred_factory()
        self._idle.append(d)
        self._maybe_idle()
        return d

    def close_sync(self, sync: bool) -> None:
        if self._fd is not None:
            if sync:
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None
