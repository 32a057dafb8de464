"""Resumable uploads into a datastore: what is decided, by whom, and when.

An upload is created only if one.image.allocate would accept its image right now
(ImageManager.check_allocate: datastore USE, quotas, capacity against
Upload-Length, name and type rules, RESTRICTED attributes) and the staging space
limits allow it: nothing is stored before that.  Its bytes are then appended
(store/staging.py); when the last one arrives the image is allocated from the
staged file as oned does from a PATH (STAT, so the capacity check and quotas count
the size it expands to; LOCKED, cp, READY) and STAT and cp may read that one file
(restricted.staged_env).  Each user sees only their own uploads: another
user's id is "not found", so ids do not leak.  Expired, terminated, failed and
finished uploads leave nothing in the staging directory; reconcile() applies the
same rules after a restart.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from oned_images import errors
from oned_images.domain.permissions import Caller
from oned_images.domain.states import ImageState as S
from oned_images.store import pools
from oned_images.store.models import DatastoreRow, ImageRow
from oned_images.store.staging import ID, Busy, Staging, Upload
from oned_images.template import Template
from oned_images.xmldoc.image import image_from

log = Logger(namespace="UpM")
MB = 1 << 20
#: Upload-Metadata keys: oneimage create's option names → template attributes
#: (datastore is the allocate argument; filename, as Uppy sends it, the default name).
METADATA = {"name": "NAME", "type": "TYPE", "persistent": "PERSISTENT",
            "description": "DESCRIPTION", "prefix": "DEV_PREFIX", "target": "TARGET",
            "driver": "DRIVER", "format": "FORMAT", "datastore": None, "filename": None}
DEFAULT_DATASTORE = 1
METHOD = "one.image.allocate"


class Refused(Exception):
    """An upload request refused: the HTTP status and a text for the client."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def _one_error(exc: errors.OneError, caller: Caller) -> Refused:
    status = {errors.ErrorCode.AUTHORIZATION: 403, errors.ErrorCode.AUTHENTICATION: 401}.get(
        exc.code, 400)
    text = exc.message(METHOD, caller.uid, "IMAGE")
    if "Not enough space in datastore" in text:
        status = 507
    return Refused(status, text)


#: characters outside XML 1.0's Char production (\t, \n and \r are allowed)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def parse_metadata(header: str) -> dict[str, str]:
    """tus Upload-Metadata: "key base64value, key2 base64value2" (a value may be absent)."""
    out: dict[str, str] = {}
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        if key in out:
            raise Refused(400, f"Upload-Metadata key {key!r} given twice")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, f"Upload-Metadata value of {key!r} is not base64 of UTF-8 "
                          "text") from None
        if _NOT_XML.search(out[key]):
            # what XML-RPC cannot carry must not reach a template: the image document
            # would stop being XML
            raise Refused(400, f"Upload-Metadata value of {key!r} holds a character XML "
                          "cannot carry (a control character, U+FFFE or U+FFFF)")
    unknown = sorted(set(out) - set(METADATA))
    if unknown:
        raise Refused(400, f"Unknown Upload-Metadata key {unknown[0]!r}; known keys: "
                      + ", ".join(sorted(METADATA)))
    return out


def default_name(filename: str) -> str:
    """A file name as browsers send it, without any directory (either separator)."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1].strip()


@dataclass
class UploadManager:
    app: Any
    staging: Staging = field(init=False)
    uploads: dict[str, Upload] = field(default_factory=dict)
    #: ids with a PATCH (or the allocation) in progress
    busy: set[str] = field(default_factory=set)
    #: WORKERS > 1: the data-file locks this worker holds (id -> descriptor), and the
    #: finished uploads whose record a sibling holds (claim)
    locks: dict[str, int] = field(default_factory=dict)
    homes: dict[str, Staging] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # WORKERS > 1: each worker's uploads are its own (a worker's start-up reconcile
        # must not judge a sibling's uploads in progress); restricted.staged_env knows.
        worker = self.app.config.worker
        self.staging = Staging(os.path.join(self.app.config.staging_dir, f"w{worker}")
                               if worker else self.app.config.staging_dir)

    @property
    def config(self):
        return self.app.config

    # ------------------------------------------- WORKERS > 1: one upload, any worker
    @property
    def shared(self) -> bool:
        """The workers of one parent stage uploads side by side, and a client's next
        request may reach any of them (a new connection goes to whichever accepts)."""
        return bool(self.config.worker)

    async def claim(self, caller: Caller, upload_id: str, lock: bool = False) -> None:
        """Before a request on an upload, with WORKERS > 1: make this worker's view of
        it the files' (the upload may have moved to a sibling and back), and take an
        idle upload a sibling staged, so that resuming works whichever worker the
        client reaches.  ``lock``: also hold its data file's lock (one writer among
        the workers) until :meth:`unlock`.  A finished upload is not moved (its image's
        copy reads the file where it is), nor one a sibling is writing to: their record
        is read where it lies (HEAD answers; a PATCH gets 409).  Another
        user's upload is left alone (find says "No such upload")."""
        if not self.shared or not ID.match(upload_id):
            return
        busy = Refused(409, "Another request is writing to this upload")
        if upload_id in self.busy:
            if lock:
                raise busy
            return
        try:
            upload, home, fd, moved = await deferToThread(self._claim_sync, caller.uid,
                                                          upload_id, lock)
        except Busy:
            raise busy from None
        if upload_id in self.busy:  # a request of this worker began meanwhile
            if fd is not None:
                os.close(fd)
            if lock:
                raise busy
            return
        self.homes.pop(upload_id, None)
        if upload is None:
            self.uploads.pop(upload_id, None)
            return
        self.uploads[upload_id] = upload
        if home is not None:
            self.homes[upload_id] = home
        if moved:
            log.info("Upload {id} of user {uid} taken over from another worker",
                     id=upload_id, uid=upload.uid)
        if fd is not None:
            self.unlock(upload_id)
            self.locks[upload_id] = fd

    def unlock(self, upload_id: str) -> None:
        fd = self.locks.pop(upload_id, None)
        if fd is not None:
            os.close(fd)

    def _siblings(self) -> list[Staging]:
        root = self.config.staging_dir
        own = os.path.basename(self.staging.directory)
        try:
            names = sorted(os.listdir(root))
        except FileNotFoundError:
            return []
        return [Staging(os.path.join(root, n)) for n in names
                if n != own and self.config.is_worker_dir(n)]

    def _claim_sync(self, uid: int, upload_id: str,
                    lock: bool) -> tuple[Upload | None, Staging | None, int | None, bool]:
        """(the upload as staged now, the sibling directory holding a finished one,
        the lock, whether it was moved here); on a thread."""
        own = self.staging
        upload = own.load(upload_id)
        if upload is not None:
            if not lock or upload.image_id >= 0:
                return upload, None, None, False
            fd = own.lock(upload_id)
            if fd is not None:
                return own.load(upload_id), None, fd, False
        for sibling in self._siblings():
            theirs = sibling.load(upload_id)
            if theirs is None:
                continue
            if theirs.uid != uid:
                return None, None, None, False
            if theirs.image_id >= 0:
                return theirs, sibling, None, False
            try:
                fd = own.take(sibling, upload_id)
            except Busy:
                if lock:
                    raise
                # a HEAD while the sibling writes: what it has stored so far
                return sibling.load(upload_id), sibling, None, False
            if fd is None:
                return None, None, None, False
            if not lock:
                os.close(fd)
                fd = None
            return own.load(upload_id), None, fd, True
        return None, None, None, False

    # ----------------------------------------------------------- lookups
    def find(self, caller: Caller, upload_id: str) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.uid != caller.uid:
            raise Refused(404, "No such upload")
        return upload

    def expires(self, upload: Upload) -> float:
        return upload.touched + self.config.upload_expiration

    def staged_bytes(self, uid: int | None = None) -> int:
        return sum(u.length for u in self.uploads.values()
                   if u.image_id < 0 and (uid is None or u.uid == uid))

    # ----------------------------------------------------------- create
    async def _datastore(self, value: str | None) -> int:
        if value is None or value == "":
            return DEFAULT_DATASTORE
        if value.lstrip("-").isdigit():
            return int(value)

        def by_name() -> list[int]:
            return [r[0] for r in DatastoreRow.select(DatastoreRow.oid)
                    .where(DatastoreRow.name == value).tuples()]
        found = await self.app.db.run(by_name)
        if len(found) != 1:
            raise Refused(400, f"Datastore {value!r} not found" if not found
                          else f"Datastore name {value!r} is ambiguous: use its id")
        return found[0]

    async def create(self, caller: Caller, length: int, metadata: str) -> Upload:
        cfg = self.config
        if length <= 0:
            raise Refused(400, "Upload-Length must be a positive number of bytes")
        if length > cfg.upload_max_mb * MB:
            raise Refused(413, f"Upload-Length {length} is over the largest upload "
                          f"({cfg.upload_max_mb} MB, UPLOAD_MAX_MB)")
        meta = parse_metadata(metadata)
        if self.staged_bytes(caller.uid) + length > cfg.upload_user_mb * MB:
            raise Refused(507, f"Not enough staging space for this user: uploads in "
                          f"progress hold {self.staged_bytes(caller.uid)} bytes of "
                          f"{cfg.upload_user_mb} MB (UPLOAD_USER_MB)")
        if self.staged_bytes() + length > cfg.upload_total_mb * MB:
            raise Refused(507, f"Not enough staging space: uploads in progress hold "
                          f"{self.staged_bytes()} bytes of {cfg.upload_total_mb} MB "
                          "(UPLOAD_TOTAL_MB)")
        ds_id = await self._datastore(meta.get("datastore"))
        tmpl = Template()
        name = meta.get("name") or default_name(meta.get("filename", ""))
        tmpl.set("NAME", name)
        for key, attr in METADATA.items():
            if attr and attr != "NAME" and meta.get(key):
                tmpl.set(attr, meta[key])
        if "persistent" in meta:
            tmpl.set("PERSISTENT", "YES" if meta["persistent"].strip().lower() in
                     ("yes", "true", "1", "on") else "NO")
        upload_id = secrets.token_hex(16)
        tmpl.set("PATH", self.staging.data_path(upload_id))
        size_mb = (length + MB - 1) // MB
        try:
            await self.app.images.check_allocate(caller, tmpl, ds_id, size_mb)
        except errors.OneError as exc:
            raise _one_error(exc, caller) from None
        now = time.time()
        upload = Upload(upload_id, caller.uid, length, ds_id, tmpl.to_text(), size_mb, metadata,
                        now, now)
        self.uploads[upload_id] = upload
        try:
            await deferToThread(self.staging.create, upload)
        except OSError as exc:
            self.uploads.pop(upload_id, None)
            await deferToThread(self.staging.remove, upload_id)
            raise Refused(500, f"Cannot stage the upload: {exc.strerror}") from None
        log.info("Upload {id} created by user {uid}: {length} bytes for datastore {ds}",
                 id=upload_id, uid=caller.uid, length=length, ds=ds_id)
        return upload

    # ------------------------------------------------------------ patch
    def begin_patch(self, caller: Caller, upload_id: str, offset: int) -> Upload:
        upload = self.find(caller, upload_id)
        if upload.image_id >= 0:
            raise Refused(409, "The upload is complete")
        if upload_id in self.busy:
            raise Refused(409, "Another request is writing to this upload")
        if offset != upload.offset:
            raise Refused(409, f"Upload-Offset {offset} does not match the {upload.offset} "
                          "bytes stored")
        self.busy.add(upload_id)
        return upload

    async def end_patch(self, upload: Upload, written: int, keep: bool) -> None:
        """A PATCH ended: ``written`` bytes are on disk; ``keep`` False (a checksum
        mismatch) takes them back.  The sidecar's time is renewed (expiry)."""
        try:
            if keep:
                upload.offset += written
            elif written:
                await deferToThread(self.staging.truncate, upload.id, upload.offset)
            upload.touched = time.time()
            if upload.id in self.uploads:
                await deferToThread(self.staging.save, upload)
        finally:
            self.busy.discard(upload.id)

    async def complete(self, caller: Caller, upload: Upload) -> int:
        """The last byte arrived: allocate the image from the staged file."""
        self.busy.add(upload.id)
        try:
            tmpl = Template.parse(upload.template)
            try:
                image_id = await self.app.images.allocate_staged(caller, tmpl, upload.ds_id)
            except errors.OneError as exc:
                await self._drop(upload)
                raise _one_error(exc, caller) from None
            upload.image_id = image_id
            upload.touched = time.time()
            await deferToThread(self.staging.save, upload)
        finally:
            self.busy.discard(upload.id)
        log.info("Upload {id} complete: image {img} allocated from it", id=upload.id,
                 img=image_id)
        return image_id

    # ------------------------------------------------------- removal
    async def terminate(self, caller: Caller, upload_id: str) -> None:
        upload = self.find(caller, upload_id)
        if upload_id in self.busy:
            raise Refused(409, "A request is writing to this upload")
        if upload.image_id >= 0:
            # the image owns the bytes now; only the record goes
            self.uploads.pop(upload_id, None)
            home = self.homes.pop(upload_id, self.staging)
            await deferToThread(home.remove_record, upload_id)
            return
        await self._drop(upload)

    async def _drop(self, upload: Upload) -> None:
        self.uploads.pop(upload.id, None)
        await deferToThread(self.staging.remove, upload.id)

    async def expire(self) -> None:
        now = time.time()
        for upload in list(self.uploads.values()):
            if upload.id in self.busy or self.expires(upload) > now:
                continue
            log.info("Upload {id} of user {uid} expired: removed", id=upload.id, uid=upload.uid)
            if upload.image_id >= 0:   # its data file is the image cp's to remove
                self.uploads.pop(upload.id, None)
                await deferToThread(self.staging.remove_record, upload.id)
            else:
                await self._drop(upload)

    async def reconcile(self) -> None:
        """After a restart: load the uploads, drop what is expired or orphaned; a
        finished upload's data file is kept only while its image is still LOCKED on
        it (the restarted cp reads and then removes it)."""
        await deferToThread(self.staging.prepare)
        uploads, removed = await deferToThread(self.staging.load_all)
        for upload_id in removed:
            log.info("Upload {id}: incomplete staging files removed", id=upload_id)
        for upload in uploads:
            self.uploads[upload.id] = upload
            if upload.image_id >= 0 and upload.offset:
                path = self.staging.data_path(upload.id)
                locked = await self.app.db.run(_locked_on, upload.image_id, path)
                if not locked:
                    await deferToThread(self.staging.remove_data, upload.id)
        await self.expire()


def _locked_on(oid: int, path: str) -> bool:
    body = pools.body(ImageRow, oid)
    if body is None:
        return False
    img = image_from(body)
    return img.state == int(S.LOCKED) and img.path == path
