"""The image verbs (oned's ImageAPI + ImageManager actions), api.md §2-§7.

Each verb is one database transaction that re-reads the image with a row
lock, checks in oned's order, writes, and reports which driver action (if
any) to start; the action then runs outside the transaction and its reply is
applied in another one (``driver_replies``).  Checks therefore never race
with a concurrent call on the same image, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import peewee
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from oned_images import errors
from oned_images.config import DaemonConfig
from oned_images.domain import driver_replies as replies
from oned_images.domain import locks, quotas
from oned_images.domain import snapshots as snap
from oned_images.domain.datastores import Datastores, read_ds, write_ds
from oned_images.domain.identity import Identity
from oned_images.domain.names import name_error
from oned_images.domain.ownership import chmod_plan, chown_plan
from oned_images.domain.permissions import (
    AuthRequest,
    Caller,
    ObjectAuth,
    Op,
    new_object_perms,
)
from oned_images.domain.pool_query import info_row, pool_filter, pool_rows, row_auth
from oned_images.domain.restricted import path_allowed, protected_paths, staged_env
from oned_images.domain.states import (
    DISK_TYPES,
    FILE_TYPES,
    DsType,
    ImageState,
    ImageType,
    InvalidTransition,
    next_state,
    state_to_str,
)
from oned_images.driver import reaper
from oned_images.driver.parse import DriverResult, parse_monitor
from oned_images.model.objects import Datastore, Image, Permissions
from oned_images.store import daemons, image_vms, pools
from oned_images.store.models import DatastoreMarkerRow, DatastoreRow, ImageRow
from oned_images.template import Template, TemplateError
from oned_images.xmldoc import drv_action
from oned_images.xmldoc.datastore import datastore_from as read_ds_body
from oned_images.xmldoc.image import image_from, image_xml
from oned_images.xmldoc.served import Served

log = Logger(namespace="ImM")

S = ImageState
REMOVED_ON_ALLOCATE = ("NAME", "TYPE", "PERSISTENT", "SIZE", "FS", "DRIVER", "PATH", "SOURCE",
                       "FORMAT", "TM_MAD")
LOCKED_STATES = (S.LOCKED, S.LOCKED_USED, S.LOCKED_USED_PERS)
SIZE_RE = re.compile(r"^\s*\d+\s*$")


# ------------------------------------------------------------------ row access
def image_auth(img: Image) -> ObjectAuth:
    return ObjectAuth("IMAGE", img.id, img.uid, img.gid, img.perms,
                      img.lock.locked if img.lock else 0)


def _meta(img: Image) -> pools.RowMeta:
    return pools.RowMeta(img.name, img.uid, img.gid, img.perms)


def read_image(oid: int, lock: bool = True) -> Image:
    body = pools.body(ImageRow, oid, lock=lock)
    if body is None:
        raise errors.no_exists("image", oid)
    img = image_from(body)
    image_vms.attach(img, loaded=True)
    return img


def write_image(img: Image, conflict=None) -> None:
    """Every write copies STATE into PREV_STATE first, as oned's update does.

    ``conflict(img, other_id)`` builds the error for a write that changes NAME or UID and
    collides with another image of that owner in a concurrent transaction (the
    checks before it cannot see uncommitted rows); the write then runs in a savepoint
    so that, on PostgreSQL, the look-up of the other image still works.
    """
    img.prev_state = img.state
    image_vms.store(img.id, img.vms)
    if conflict is None:
        pools.update(ImageRow, img.id, _meta(img), image_xml(img, vms=False),
                     datastore_id=img.datastore_id)
        return
    try:
        with ImageRow._meta.database.atomic():
            pools.update(ImageRow, img.id, _meta(img), image_xml(img, vms=False),
                         datastore_id=img.datastore_id)
    except peewee.IntegrityError:
        raise conflict(img, pools.oid_by_name(ImageRow, img.name, img.uid)) from None


def insert_image(img: Image) -> None:
    img.prev_state = 0 if img.state == S.LOCKED else img.state
    try:
        # A savepoint: a concurrent allocate of the same name can pass the pre-check and
        # only collide here, and PostgreSQL refuses every later statement of a transaction
        # whose statement failed (the look-up below would then be an Internal error).
        with ImageRow._meta.database.atomic():
            pools.insert(ImageRow, img.id, _meta(img), image_xml(img, vms=False),
                         datastore_id=img.datastore_id)
            # a new id: rows under it are leftovers of a row deleted by hand
            image_vms.drop_image(img.id)
            image_vms.store(img.id, img.vms)
    except peewee.IntegrityError:
        other = pools.oid_by_name(ImageRow, img.name, img.uid)
        raise errors.allocate(f"NAME is already taken by IMAGE {other}.") from None


def delete_row(img: Image) -> None:
    """The image is gone: its owner's datastore quota and its driver claim are released
    in the same transaction (every path that drops an image row comes here)."""
    pools.delete(ImageRow, img.id)
    image_vms.drop_image(img.id)
    daemons.release("image", img.id)
    quotas.release(img.uid, img.gid, img.datastore_id, img.size)


def _insert_rules(config: DaemonConfig, template: Template, itype: ImageType,
                  persistent: bool) -> None:
    """Image::insert's template rules, which allocate and clone share (a clone is
    allocated from its source's template): the attributes kept as image fields or
    generated (DRIVER) leave the template, a disk image without DEV_PREFIX gets the
    configured one, a file image loses it, a non-persistent one loses SHAREABLE."""
    for attr in REMOVED_ON_ALLOCATE:
        template.remove(attr)
    if not persistent and (template.get("PERSISTENT_TYPE") or "").upper() == "SHAREABLE":
        template.remove("PERSISTENT_TYPE")
    if itype in DISK_TYPES:
        if not template.has("DEV_PREFIX"):
            template.set("DEV_PREFIX", config.default_cdrom_device_prefix
                         if itype == ImageType.CDROM else config.default_device_prefix)
    else:
        template.remove("DEV_PREFIX")


def _type_of(text: str) -> ImageType | None:
    try:
        return ImageType[text.upper()]
    except KeyError:
        return None


def _yes(value: str | None) -> bool:
    return (value or "").strip().upper() == "YES"


def _check_allocate_ds(ds: Datastore) -> None:
    if ds.type not in (DsType.IMAGE_DS, DsType.FILE_DS):
        raise errors.allocate("New images can only be allocated in a files or image datastore.")


def _capacity_error(config: DaemonConfig, ds: Datastore, size: int,
                    reserved: bool = False) -> bool:
    """oned's check of ``size`` MB against the datastore's monitored space.

    With ``reserved`` (inside the transaction that holds the datastore's row lock)
    the sizes of the copies still running in it are taken off first, so concurrent
    allocates and clones cannot together promise more than there is.
    """
    if not _capacity_checked(config, ds):
        return False
    limit = ds.template.get("LIMIT_MB")
    try:
        avail = int(float(limit)) - ds.used_mb if limit else ds.free_mb
    except ValueError:
        avail = ds.free_mb
    if reserved and 0 < size <= avail:
        avail -= reserved_mb(ds.id)
    return size > max(avail, 0)


def _capacity_checked(config: DaemonConfig, ds: Datastore) -> bool:
    """DATASTORE_CAPACITY_CHECK of the datastore's template, else of the config."""
    check = ds.template.get("DATASTORE_CAPACITY_CHECK")
    return _yes(check) if check else config.datastore_capacity_check


def _copy_env(config: DaemonConfig, ds: Datastore, checked: bool = True) -> dict[str, str]:
    """ONED_CAPACITY_CHECK of a cp (and of the STAT before it): NO when the space was
    not checked at allocate (the datastore's or the daemon's DATASTORE_CAPACITY_CHECK, or an admin's
    allocate that skipped it), so the copy is then not bounded by the datastore's
    FREE_MB/LIMIT_MB either, only by DRIVER_COPY_MAX_MB (fs_action.copy_limit)."""
    return {"ONED_CAPACITY_CHECK":
            "YES" if checked and _capacity_checked(config, ds) else "NO"}


def _copying(img: Image) -> bool:
    """A CP, MKFS or CLONE is running for the image (a snapshot operation is not)."""
    return img.state == S.LOCKED and img.target_snapshot < 0


def _image_info_row(oid: int):
    """info_row with the image's VMS spliced into its served copy (store/image_vms.py)."""
    row = info_row(oid, ImageRow)
    if row is None:
        return None
    return (image_vms.splice_one(oid, row[0]), *row[1:])


def _image_pool_bodies(where, desc: bool, start: int, end: int) -> list[bytes]:
    return image_vms.splice_rows(pool_rows(where, desc, start, end, ImageRow))


def reserved_mb(ds_id: int) -> int:
    """The space promised to the copies running in datastore ``ds_id``: derived from
    the image rows (LOCKED), so it is right after a restart and for several daemons
    on one database.  A substring test on the body only narrows the rows (each match
    is then read): LIKE on SQLite, strpos on PostgreSQL (8 times faster than ILIKE).
    It reads every body of the datastore, so its cost grows with them (10,000 images:
    about 25 ms on SQLite, 12 ms on PostgreSQL on a loaded 2-core machine); an indexed
    STATE column in a later schema would make it constant."""
    needle = f"<STATE>{int(S.LOCKED)}</STATE>"
    if isinstance(ImageRow._meta.database.obj, peewee.SqliteDatabase):
        narrow = ImageRow.body.contains(needle)
    else:
        narrow = peewee.fn.strpos(ImageRow.body, needle) > 0
    query = (ImageRow.select(ImageRow.body)
             .where((ImageRow.datastore_id == ds_id) & narrow))
    total = 0
    for (body,) in query.tuples():
        img = image_from(body)
        if _copying(img):
            total += max(img.size, 0)
    return total


def _charge(ds: Datastore, size: int) -> None:
    """A finished copy's space is taken off FREE_MB at once, in the transaction that
    ends its reservation; the next monitor then measures the real figures."""
    ds.free_mb = max(ds.free_mb - size, 0)
    ds.used_mb += size
    write_ds(ds)


@dataclass
class Followup:
    """A driver action to start once the transaction has committed."""

    action: str
    image_id: int
    ds_mad: str
    b64: str
    mode: str = "stdin"
    _: KW_ONLY  # the optional extras are named: a positional mix-up must not type-check
    #: per-action environment of the script (ONED_URL_POLICY for cp)
    env: dict[str, str] | None = None
    #: whose share of the driver slots the action takes (the image owner)
    owner: int | None = None
    #: a file removed once the action ended (an upload's staged file)
    cleanup: str | None = None
    #: the image's datastore when the maker knew it: the action starts without a
    #: database round trip to look it up (_hidden_datastore)
    ds_id: int | None = None

    def __post_init__(self) -> None:
        """A Followup is made only inside the transaction that makes its action due:
        the running daemon claims the action there (store/daemons.py), so another
        daemon never takes a live daemon's work for an orphan."""
        daemons.claim("image", self.image_id, self.action)


class _DryRun(Exception):
    """Rolls back check_allocate's transaction."""


def url_policy(admin: bool) -> dict[str, str]:
    """ONED_URL_POLICY of a cp/stat: images of admins (uid 0, group 0) may reach any
    address; others only public ones or the datastore's URL_ALLOWED_NETWORKS."""
    return {"ONED_URL_POLICY": "open" if admin else "restricted"}


@dataclass
class ImageManager:
    db: Any
    config: DaemonConfig
    identity: Identity
    datastores: Datastores
    drivers: Any
    reactor: Any
    pending: set[defer.Deferred] = field(default_factory=set)
    _monitoring: set[int] = field(default_factory=set)
    #: monitors asked for while one of the datastore ran: run once more after it
    _monitor_again: set[int] = field(default_factory=set)
    #: MB taken off FREE_MB by copies that ended in this process, per datastore
    _charged: dict[int, int] = field(default_factory=dict)
    #: datastores whose marker file this daemon found (README "Several daemons")
    _visible: set[int] = field(default_factory=set)
    #: datastores whose orphan files a takeover could not sweep yet (live copies ran)
    _unswept: set[int] = field(default_factory=set)
    #: told how many daemons are live at each lease renewal (store/versions.py)
    peers: Any = None
    #: time.monotonic() of the last lease renewal that reached the database
    _renewed_at: float = field(default_factory=time.monotonic)
    #: called with (image id, VM ids) when a copy that VMs waited on (LOCKED_USED,
    #: LOCKED_USED_PERS) ends either way: the CLONING VMs' lock check (vms.md §5.3 step 7)
    on_unlocked: Any = None

    # -------------------------------------------------------------- helpers
    @property
    def acl(self):
        return self.identity.acl

    def _auth(self, caller: Caller) -> AuthRequest:
        return AuthRequest(caller, self.acl)

    def _mode(self, ds_mad: str) -> str:
        return self.config.ds_mad(ds_mad).mode

    def _start(self, follow: Followup | None) -> None:
        if follow is None:
            return
        d = defer.ensureDeferred(self._run_action(follow))
        self.pending.add(d)
        d.addErrback(lambda f: log.failure("driver action {a} for image {i} crashed", f,
                                           a=follow.action, i=follow.image_id))
        d.addBoth(lambda _: self.pending.discard(d))

    def _drv_data(self, img: Image, ds: Datastore) -> str:
        return drv_action.action_data(img, ds)

    async def _run_action(self, follow: Followup) -> None:
        try:
            hidden = await self._hidden_datastore(follow.image_id, follow.ds_id)
            if hidden:
                result = DriverResult(follow.action, follow.image_id, 255, "", "", error=hidden)
            else:
                result = await self.drivers.run(follow.action, follow.ds_mad, follow.image_id,
                                                follow.b64, key=("image", follow.image_id),
                                                mode=follow.mode, env=follow.env,
                                                owner=follow.owner)
        except Exception as exc:
            # A bug of ours must not leave the image LOCKED until the next restart: it
            # fails like a script that could not run, with a text saying what broke.
            log.failure("driver action {a} for image {i} could not run", a=follow.action,
                        i=follow.image_id)
            result = DriverResult(follow.action, follow.image_id, 255, "", "",
                                  error=f"Internal error running the driver: {exc!r}")
        if follow.cleanup and not (result.cancelled and self.drivers.stopping):
            await deferToThread(_remove, follow.cleanup)
        if result.cancelled:
            # Killed on purpose: by a forced delete, which already settled the image, or
            # by a daemon stop, after which reconcile() runs the action again.  Applying
            # it as a failure would leave an ERROR image that reconciliation skips.
            return
        waiting: list[int] = []
        ds_id, charged = await self.db.run(self._apply_reply, follow.action, follow.image_id,
                                           result, waiting)
        if waiting and self.on_unlocked is not None:
            self.on_unlocked(follow.image_id, waiting)
        if ds_id is not None and follow.action in ("cp", "mkfs", "clone", "rm"):
            self.monitor_soon(ds_id)

    def _apply_reply(self, action: str, oid: int, result: DriverResult,
                     waiting: list[int] | None = None) -> tuple[int | None, int]:
        """Store a driver result; returns the image's datastore and the MB charged to
        it (a copy that ended well).  ``waiting`` receives the VMs that waited on the
        image's copy when it has just left LOCKED_USED(_PERS): their check runs in a
        transaction of its own afterwards (VM rows are locked before image rows
        everywhere else, so they are not locked here)."""
        if not daemons.owns("image", oid):
            # This daemon's lease ran out meanwhile and another one took the action
            # over: its run decides, this late reply is dropped.
            log.warn("Dropped the {a} reply of image {i}: another daemon took the action "
                     "over", a=action, i=oid)
            return None, 0
        daemons.release("image", oid)
        ds = None
        if action in ("cp", "mkfs", "clone") and result.ok:
            # The datastore's row before the image's, as allocate and clone take them.
            row = (ImageRow.select(ImageRow.datastore_id).where(ImageRow.oid == oid)
                   .tuples().first())
            if row is None:
                return None, 0
            try:
                ds = read_ds(row[0], lock=True)
            except errors.OneError:
                ds = None
        body = pools.body(ImageRow, oid, lock=True)
        if body is None:
            return None, 0
        img = image_from(body)
        copying = _copying(img)
        locked_used = img.state in (S.LOCKED_USED, S.LOCKED_USED_PERS)
        if action in ("cp", "mkfs"):
            replies.copy_done(img, result, action)
        elif action == "clone":
            source_id = img.cloning_id
            replies.clone_done(img, result)
            src_body = pools.body(ImageRow, source_id, lock=True) if source_id >= 0 else None
            if src_body is not None:
                source = image_from(src_body)
                replies.clone_release(source, img.id)
                write_image(source)
        elif action == "rm":
            if replies.rm_done(img, result):
                delete_row(img)
                return img.datastore_id, 0
        elif action.startswith("snap_"):
            size = img.size
            replies.snapshot_done(img, result, action)
            if img.size != size:  # a revert: the datastore quota follows the image SIZE
                quotas.release(img.uid, img.gid, img.datastore_id, size - img.size, images=0)
        if (locked_used and waiting is not None
                and img.state not in (S.LOCKED_USED, S.LOCKED_USED_PERS)):
            waiting.extend(image_vms.ids(img.id))
        charged = 0
        if ds is not None and copying and img.state == S.READY:
            charged = max(img.size, 0)
            _charge(ds, charged)
            # Counted here, under the datastore's row lock, not on the reactor once the
            # commit is back: a monitor result recorded in between would not see this
            # charge as late and would give the copy's space back (record_monitor).
            self._charged[ds.id] = self._charged.get(ds.id, 0) + charged
        write_image(img)
        return img.datastore_id, charged

    # ------------------------------------------------------------- monitor
    def monitor_soon(self, ds_id: int) -> None:
        d = defer.ensureDeferred(self.monitor(ds_id))
        d.addErrback(lambda f: log.failure("monitor of datastore {ds} failed", f, ds=ds_id))

    async def monitor_all(self) -> None:
        ids = await self.db.run(lambda: [r[0] for r in DatastoreRow.select(DatastoreRow.oid)
                                         .tuples()])
        await defer.DeferredList([defer.ensureDeferred(self.monitor(i)) for i in ids],
                                 consumeErrors=True)

    async def monitor(self, ds_id: int) -> None:
        """One MONITOR per datastore at a time; requests during one make one more run.

        A copy that ends while the script runs may be missing from what it measured,
        although its space is already taken off FREE_MB (``_charge``): so the space
        charged meanwhile is taken off the measured figures too, and the run that
        follows measures again.
        """
        if ds_id in self._monitoring:
            self._monitor_again.add(ds_id)
            return
        self._monitoring.add(ds_id)
        charged = self._charged.get(ds_id, 0)
        try:
            try:
                ds = await self.db.run(read_ds, ds_id)
            except errors.OneError:
                return
            if ds.type == DsType.SYSTEM_DS:
                return  # oned monitors system datastores only through shared TM drivers
            if await self._hidden_datastore(None, ds_id):
                return
            if not await self.db.run(daemons.try_hold, "monitor", ds_id, "monitor"):
                return  # another daemon is monitoring it now: one monitor at a time
            b64 = drv_action.action_data(None, ds)
            try:
                result = await self.drivers.run("monitor", ds.ds_mad, ds_id, b64,
                                                key=("datastore", ds_id),
                                                mode=self._mode(ds.ds_mad))
            finally:
                await self.db.run(daemons.release, "monitor", ds_id)
            if not result.ok:
                return
            values = parse_monitor(result.stdout)
            if {"TOTAL_MB", "FREE_MB", "USED_MB"} <= set(values):
                await self.datastores.record_monitor(
                    ds_id, values["TOTAL_MB"], values["FREE_MB"], values["USED_MB"],
                    late=lambda: self._charged.get(ds_id, 0) - charged)
        finally:
            self._monitoring.discard(ds_id)
            if ds_id in self._monitor_again:
                self._monitor_again.discard(ds_id)
                self.monitor_soon(ds_id)

    # ------------------------------------------------------------------ info
    async def info(self, caller: Caller, oid: int) -> Served:
        if oid < 0 and not caller.is_admin:
            raise errors.authorization("Not authorized to perform USE IMAGE")
        row = await self.db.read(_image_info_row, oid)
        if row is None:
            raise errors.no_exists("image", oid)
        if not caller.is_admin:
            req = self._auth(caller)
            req.add(Op.USE, row_auth("IMAGE", oid, row), check_lock=False)
            req.check()
        return Served([row[0]])

    async def pool_info(self, caller: Caller, flag: int, start: int, end: int) -> Served:
        if flag < -4:
            raise errors.api("Incorrect filter_flag")
        where = self._pool_filter(caller, flag)
        order = self.identity.user_option(caller, "API_LIST_ORDER",
                                          self.config.api_list_order).upper()
        bodies = await self.db.read(_image_pool_bodies, where, order != "ASC", start, end)
        return Served.pool("IMAGE_POOL", bodies)

    def _pool_filter(self, caller: Caller, flag: int) -> peewee.Expression | None:
        return pool_filter(caller, self.acl, flag, ImageRow, "IMAGE")


    # ------------------------------------------------------------- allocate
    async def allocate(self, caller: Caller, text: str, ds_id: int,
                       no_check_capacity: bool) -> int:
        try:
            tmpl = Template.parse(text)
        except TemplateError as exc:
            raise errors.internal(exc.message) from None
        if self._needs_stat(tmpl):
            args = await self._allocate_args(caller, tmpl, ds_id, no_check_capacity)
            image_id, follow = await self.db.run(self._insert_allocate, *args)
        else:
            # No STAT to wait for: the checks and the insert in one transaction, one hop
            # to the database thread instead of two (an allocate by SOURCE or a
            # datablock is mostly these hops).
            image_id, follow = await self.db.run(self._allocate_txn, caller, tmpl, ds_id,
                                                 no_check_capacity)
        self._start(follow)
        return image_id

    def _allocate_txn(self, caller: Caller, tmpl: Template, ds_id: int,
                      no_check_capacity: bool) -> tuple[int, Followup | None]:
        """allocate() without a STAT: _allocate_args' checks in their order, then the
        insert, in one transaction."""
        ds = read_ds(ds_id, lock=not tmpl.get("SOURCE"))  # (see _insert_allocate)
        _check_allocate_ds(ds)
        size = self._known_size(tmpl)
        assert size is not None   # (_probed said so)
        return self._insert_allocate(*self._checked_args(caller, tmpl, ds, no_check_capacity,
                                                         size), ds=ds)

    async def check_allocate(self, caller: Caller, tmpl: Template, ds_id: int,
                             size: int) -> None:
        """Every check of one.image.allocate for ``tmpl`` (with its PATH) of ``size`` MB,
        nothing stored: an upload is refused by these rules before its first byte.
        The insert runs and is rolled back, so the name, quota and datastore rules
        are the very ones allocate applies."""
        args = await self._allocate_args(caller, tmpl.copy(), ds_id, False, size)

        def dry_run() -> None:
            self._insert_allocate(*args)
            raise _DryRun

        try:
            await self.db.run(dry_run)
        except _DryRun:
            pass

    async def allocate_staged(self, caller: Caller, tmpl: Template, ds_id: int) -> int:
        """allocate() of an upload's staged file (tmpl's PATH).  STAT measures it as
        it measures a PATH (the size a compressed upload expands to: that is what the
        capacity check and the quotas count, as for the same file given by PATH);
        STAT and cp may read exactly that file (restricted.staged_env), and the file
        is removed once the cp ended (Followup.cleanup)."""
        staged = staged_env(self.config, tmpl.get("PATH") or "")
        ds = await self.db.run(read_ds, ds_id)
        _check_allocate_ds(ds)
        size = await self._stat_size(tmpl.get("PATH") or "", ds, caller,
                                     {**staged, **_copy_env(self.config, ds)})
        args = await self._allocate_args(caller, tmpl, ds_id, False, size)
        image_id, follow = await self.db.run(self._insert_allocate, *args)
        if follow is not None:
            follow.env = {**(follow.env or {}), **staged}
            follow.cleanup = tmpl.get("PATH")
        self._start(follow)
        return image_id

    async def _allocate_args(self, caller: Caller, tmpl: Template, ds_id: int,
                             no_check_capacity: bool, size: int | None = None) -> tuple:
        """allocate's checks before its transaction; the arguments of _insert_allocate.
        ``size`` (MB) given: known already, no STAT probe of PATH."""
        ds = await self.db.read(read_ds, ds_id)
        _check_allocate_ds(ds)
        if size is None:
            size = await self._probe_size(tmpl, ds, caller, no_check_capacity)
        return self._checked_args(caller, tmpl, ds, no_check_capacity, size)

    def _checked_args(self, caller: Caller, tmpl: Template, ds: Datastore,
                      no_check_capacity: bool, size: int) -> tuple:
        """The checks of allocate once the datastore and the size are known (on the
        reactor or in allocate's transaction: they read only in-memory state)."""
        ds_id = ds.id
        if _capacity_error(self.config, ds, size) and not (caller.is_admin and no_check_capacity):
            raise errors.action("Not enough space in datastore")
        tmpl.set("SIZE", str(size))
        if not caller.is_admin:
            for attr in self.config.image_restricted_attr:
                if tmpl.has(attr):
                    raise errors.authorization(f"Template includes a restricted attribute {attr}")
        req = self._auth(caller)
        req.add(Op.CREATE, ObjectAuth("IMAGE", -1))
        req.add(Op.USE, ObjectAuth("DATASTORE", ds.id, ds.uid, ds.gid, ds.perms, 0,
                                   tuple(ds.clusters)))
        req.check()
        raw_persistent = tmpl.get("PERSISTENT")
        if raw_persistent is None:
            raw_persistent = self.identity.user_option(
                caller, "DEFAULT_IMAGE_PERSISTENT_NEW", self.config.default_image_persistent_new)
        persistent = _yes(raw_persistent)
        type_text = (tmpl.get("TYPE") or "").upper() or self.config.default_image_type
        itype = _type_of(type_text)
        if itype in FILE_TYPES:
            persistent = False
        elif itype == ImageType.BACKUP:
            persistent = True
        perms = new_object_perms(caller.uid, caller.gid, self.identity.umask_for(caller),
                                 self.config.enable_other_permissions)
        check = not (caller.is_admin and no_check_capacity)
        return caller, tmpl, ds_id, size, persistent, type_text, perms, check

    def _needs_stat(self, tmpl: Template) -> bool:
        """True when allocate must STAT the image's PATH (see _known_size)."""
        type_text = (tmpl.get("TYPE") or "").upper() or self.config.default_image_type
        itype = _type_of(type_text) or ImageType.OS
        return (itype != ImageType.BACKUP and not tmpl.get("SOURCE")
                and bool(tmpl.get("PATH")))

    def _known_size(self, tmpl: Template) -> int | None:
        """The size (MB) oned's ImageAllocate takes from the template, or None when
        the image's PATH must be probed by STAT (api.md §6.4)."""
        type_text = (tmpl.get("TYPE") or "").upper() or self.config.default_image_type
        itype = _type_of(type_text) or ImageType.OS

        def template_size() -> int:
            raw = tmpl.get("SIZE")
            if raw is None or not SIZE_RE.match(raw):
                raise errors.internal(
                    "Cannot parse image SIZE: Wrong number or missing SIZE attribute.")
            return int(raw)

        if itype == ImageType.BACKUP or tmpl.get("SOURCE"):
            return template_size()
        if tmpl.get("PATH"):
            return None
        if itype in (ImageType.OS, ImageType.DATABLOCK):
            return template_size()
        raise errors.internal(
            f"Cannot parse image SIZE: Either PATH or SOURCE are required for {itype.name}")

    async def _probe_size(self, tmpl: Template, ds: Datastore, caller: Caller,
                          no_check_capacity: bool) -> int:
        """oned's ImageAllocate size probe (api.md §6.4), STAT through the driver."""
        size = self._known_size(tmpl)
        if size is not None:
            return size
        path = tmpl.get("PATH") or ""
        if path:
            self._check_path(path, ds)
            checked = not (caller.is_admin and no_check_capacity)
            return await self._stat_size(path, ds, caller,
                                         _copy_env(self.config, ds, checked))
        raise AssertionError("unreachable: _known_size returns a size without a PATH")

    async def _stat_size(self, path: str, ds: Datastore, caller: Caller,
                         env: dict[str, str] | None = None) -> int:
        """The datastore driver's STAT of ``path``: its size in MB (``env``: more of
        the script's environment: an upload's ONED_STAGED_FILE, and ONED_CAPACITY_CHECK,
        since STAT expands a compressed image no further than cp may write it)."""
        request_id = _next_stat_id()
        result = await self.drivers.run(
            "stat", ds.ds_mad, request_id, drv_action.stat_data(path, ds),
            key=("stat", request_id), mode=self._mode(ds.ds_mad),
            env={**url_policy(caller.is_admin), **(env or {})}, owner=caller.uid)
        if result.timed_out:
            raise errors.internal("Cannot parse image SIZE: Request timeout")
        if not result.ok:
            raise errors.internal(f"Cannot parse image SIZE: {result.error}")
        match = re.match(r"\s*(\d+)", result.first_line)
        if not match:
            raise errors.internal(
                f"Cannot parse image SIZE: {result.first_line or 'empty STAT reply'}")
        return int(match.group(1))

    def _check_path(self, path: str, ds: Datastore) -> None:
        always = protected_paths(self.config)
        if not path_allowed(path, ds.template.get("SAFE_DIRS") or "",
                            ds.template.get("RESTRICTED_DIRS") or "", always):
            raise errors.internal(
                f"Cannot parse image SIZE: Not allowed to copy image file {path}: it is not "
                "under the datastore SAFE_DIRS and is under its RESTRICTED_DIRS")

    def _insert_allocate(self, caller: Caller, tmpl: Template, ds_id: int, size: int,
                         persistent: bool, type_text: str, perms: Permissions,
                         check_capacity: bool, ds: Datastore | None = None,
                         ) -> tuple[int, Followup | None]:
        """The insert, in the caller's transaction; ``ds``: the datastore as this
        transaction read it (locked, when the image copies), else it is read here."""
        # The datastore's row lock serialises the capacity checks of concurrent
        # allocates and clones with the inserts of their LOCKED images (reservations).
        # An image registered by SOURCE copies nothing and reserves nothing: allocate()
        # checked it as oned, and it does not hold the datastore's row (PostgreSQL:
        # allocates by SOURCE into one datastore do not wait for each other there).
        copies = not tmpl.get("SOURCE")
        if ds is None:
            ds = read_ds(ds_id, lock=copies)
        if check_capacity and copies and _capacity_error(self.config, ds, size, reserved=True):
            raise errors.action("Not enough space in datastore")
        # ImageAllocate: the quota (IMAGES 1, SIZE) before the pool's checks; a later
        # refusal rolls the charge back with the rest of this transaction.
        quotas.charge(caller.uid, caller.gid, ds.id, size)
        if self.config.ds_mad(ds.ds_mad).persistent_only and not persistent:
            raise errors.allocate("This Datastore only accepts persistent images.")
        name = tmpl.get("NAME") or ""
        name = name.rstrip()
        err = name_error(name)
        if err:
            raise errors.allocate(err)
        itype = _type_of(type_text)
        check_type = itype if itype is not None else ImageType.OS
        if ds.type == DsType.FILE_DS and check_type not in FILE_TYPES:
            raise errors.allocate("Only IMAGES of type KERNEL, RAMDISK and CONTEXT can be "
                                  "registered in a FILE_DS datastore")
        if ds.type == DsType.IMAGE_DS and check_type in FILE_TYPES:
            raise errors.allocate("IMAGES of type KERNEL, RAMDISK and CONTEXT cannot be "
                                  "registered in an IMAGE_DS datastore")
        if check_type == ImageType.BACKUP and ds.type != DsType.BACKUP_DS:
            raise errors.allocate("IMAGES of type BACKUP can only be registered in an "
                                  "BACKUP_DS datastore")
        other = pools.oid_by_name(ImageRow, name, caller.uid)
        if other is not None:
            raise errors.allocate(f"NAME is already taken by IMAGE {other}.")
        if itype is None:
            raise errors.allocate("Unknown type ")
        source = tmpl.get("SOURCE") or ""
        path = tmpl.get("PATH") or ""
        fmt = tmpl.get("FORMAT") or ""
        if source:
            if path:
                raise errors.allocate("PATH and SOURCE cannot be both set.")
            if not fmt:
                raise errors.allocate("SOURCE needs FORMAT to be set.")
        elif itype == ImageType.BACKUP:
            raise errors.allocate("SOURCE cannot be empty for BACKUP images")
        template = tmpl.copy()
        ds_driver = self.config.tm_mad(ds.tm_mad).get("DRIVER") or ds.template.get("DRIVER")
        action = None
        if source:
            state = S.READY
        elif path:
            fmt = ""
            state, action = S.LOCKED, "cp"
        elif itype in (ImageType.OS, ImageType.DATABLOCK):
            fmt = ds_driver or fmt or "raw"
            state, action = S.LOCKED, "mkfs"
        else:
            raise errors.allocate("No PATH nor SOURCE in template.")
        fs = template.get("FS") or ""
        _insert_rules(self.config, template, itype, persistent)
        if action == "mkfs" and ds_driver:
            template.set("DRIVER", ds_driver)
        now = int(time.time())
        img = Image(
            id=pools.next_oid("image_pool", 0), uid=caller.uid, gid=caller.gid,
            uname=caller.uname, gname=caller.gname, name=name, perms=perms, type=int(itype),
            disk_type=ds.disk_type, persistent=int(persistent), regtime=now, modtime=now,
            source=source, path=path, format=fmt, fs=fs, size=size, state=int(state),
            datastore_id=ds.id, datastore=ds.name, template=template,
            snapshots=snap.new_list(),
        )
        insert_image(img)
        follow = None
        if action:
            env = url_policy(caller.is_admin)
            if action == "cp":
                env.update(_copy_env(self.config, ds, check_capacity))
            follow = Followup(action, img.id, ds.ds_mad, self._drv_data(img, ds),
                              self._mode(ds.ds_mad), env=env, owner=img.uid, ds_id=ds.id)
        return img.id, follow

    # ---------------------------------------------------------------- clone
    async def clone(self, caller: Caller, oid: int, name: str, ds_id: int) -> int:
        perms = new_object_perms(caller.uid, caller.gid, self.identity.umask_for(caller),
                                 self.config.enable_other_permissions)
        default_persistent = self.identity.user_option(
            caller, "DEFAULT_IMAGE_PERSISTENT", self.config.default_image_persistent)
        new_id, follow = await self.db.run(self._clone_txn, caller, oid, name, ds_id, perms,
                                           default_persistent)
        self._start(follow)
        return new_id

    def _clone_txn(self, caller: Caller, oid: int, name: str, ds_id: int, perms: Permissions,
                   default_persistent: str) -> tuple[int, Followup]:
        # Row locks in one order everywhere: the datastore's, then the images'.
        peek = read_image(oid, lock=False)
        target_id = peek.datastore_id if ds_id == -1 else ds_id
        try:
            target: Datastore | None = read_ds(target_id, lock=True)
        except errors.OneError:
            target = None
        src = read_image(oid)
        if src.type not in DISK_TYPES:
            raise errors.action("KERNEL, RAMDISK, BACKUP and CONTEXT cannot be cloned.")
        if snap.count(src.snapshots):
            raise errors.action("Cannot clone images with snapshots")
        if target is None:
            raise errors.no_exists("datastore", target_id)
        if target.type != DsType.IMAGE_DS:
            raise errors.action("Clone only supported for IMAGE_DS Datastores")
        src_ds = target
        if target_id != src.datastore_id:
            src_ds = read_ds(src.datastore_id)
            if src_ds.type != DsType.IMAGE_DS:
                raise errors.action("Clone only supported for IMAGE_DS Datastores")
            if src_ds.ds_mad != target.ds_mad:
                raise errors.action("Clone only supported to same DS_MAD Datastores")
        if _capacity_error(self.config, target, src.size, reserved=True):
            raise errors.action("Not enough space in datastore")
        req = self._auth(caller)
        req.add(Op.CREATE, ObjectAuth("IMAGE", -1))
        req.add(Op.USE, image_auth(src))
        req.add(Op.USE, ObjectAuth("DATASTORE", target.id, target.uid, target.gid,
                                   target.perms, 0, tuple(target.clusters)))
        if src_ds is not target:
            req.add(Op.USE, ObjectAuth("DATASTORE", src_ds.id, src_ds.uid, src_ds.gid,
                                       src_ds.perms, 0, tuple(src_ds.clusters)))
        req.check()
        quotas.charge(caller.uid, caller.gid, target.id, src.size)
        err = name_error(name)
        if err:
            raise errors.allocate(err)
        other = pools.oid_by_name(ImageRow, name, caller.uid)
        if other is not None:
            raise errors.allocate(f"NAME is already taken by IMAGE {other}.")
        if src.state not in (S.READY, S.USED, S.CLONE):
            raise errors.allocate(f"Cannot clone image in state: {state_to_str(src.state)}")
        persistent = _yes(default_persistent) if default_persistent else bool(src.persistent)
        # Image::clone_template, then ImagePool::allocate -> Image::insert as for a new one
        template = src.template.copy()
        template.remove("VCENTER_IMPORTED")
        _insert_rules(self.config, template, ImageType(src.type), persistent)
        now = int(time.time())
        img = Image(
            id=pools.next_oid("image_pool", 0), uid=caller.uid, gid=caller.gid,
            uname=caller.uname, gname=caller.gname, name=name, perms=perms, type=src.type,
            disk_type=target.disk_type, persistent=int(persistent), regtime=now, modtime=now,
            path=src.source, format=src.format, size=src.size,
            state=int(S.LOCKED), cloning_id=src.id, datastore_id=target.id,
            datastore=target.name, template=template, snapshots=snap.new_list(),
        )
        insert_image(img)
        src.cloning_ops += 1
        src.clones = sorted(set(src.clones) | {img.id})
        new_state = next_state("clone_source", src.state, persistent=src.persistent)
        if new_state != src.state:
            replies.set_state(src, new_state)
        write_image(src)
        return img.id, Followup("clone", img.id, target.ds_mad, self._drv_data(img, target),
                                self._mode(target.ds_mad), owner=img.uid, ds_id=target.id)

    # --------------------------------------------------------------- delete
    async def delete(self, caller: Caller, oid: int, force: bool, *,
                     from_template: bool = False) -> int:
        """``from_template``: one.template.delete's recursive path, which skips the
        "Image locked" refusal (vms.md §4.5 QUIRK) and needs only MANAGE."""
        kind, follow, cancel = await self.db.run(self._delete_txn, caller, oid, force,
                                                 from_template)
        if kind == "denied":
            raise follow
        if cancel:
            # A forced delete of a LOCKED image: stop its running action first.
            waiting = self.drivers.cancel(("image", oid))
            if waiting is not None:
                await waiting
        self._start(follow)
        return oid

    def _delete_txn(self, caller: Caller, oid: int, force: bool, from_template: bool = False):
        daemons.lock_claim("image", oid)  # before the image row, as a driver reply does
        img = read_image(oid)
        op = Op.MANAGE
        locked = img.state in LOCKED_STATES
        if locked and not from_template:
            op = Op.ADMIN
            if not force:
                raise errors.internal("Image locked, use --force flag to remove the image. "
                                      "Force delete may leave some files on Datastore",
                                      resp_id=oid)
        if force:
            img.template.set("FORCE_DELETE", "YES")
            write_image(img)
        # oned writes FORCE_DELETE before every later check (QUIRK), so a refusal from
        # here on is returned, the transaction commits that write, then delete() raises.
        error = self._delete_refusal(caller, img, op)
        if error is not None:
            return ("denied", error, False)
        ds = read_ds(img.datastore_id)
        state = S(img.state)
        if img.cloning_id >= 0 and state == S.LOCKED:
            src_body = pools.body(ImageRow, img.cloning_id, lock=True)
            if src_body is not None:
                source = image_from(src_body)
                replies.clone_release(source, img.id)
                write_image(source)
        if not img.source:
            delete_row(img)
            return ("gone", None, locked)
        replies.set_state(img, next_state("delete", img.state))
        img.cloning_id = -1
        write_image(img)
        return ("rm", Followup("rm", img.id, ds.ds_mad, self._drv_data(img, ds),
                               self._mode(ds.ds_mad), owner=img.uid), locked)

    def _delete_refusal(self, caller: Caller, img: Image, op: Op) -> errors.OneError | None:
        """Authorization, then the state rules of api.md §2.3 step 5."""
        req = self._auth(caller)
        req.add(op, image_auth(img))
        error = req.error()
        if error is not None:
            return error
        try:
            read_ds(img.datastore_id)
        except errors.OneError:
            return errors.action(
                "Cannot delete image. Datastore no longer exists cannot remove image")
        state = S(img.state)
        if state == S.READY and img.running_vms > 0:
            return errors.action(f"Cannot delete image. There are {img.running_vms} VMs using it.")
        if state == S.CLONE:
            return errors.action(
                f"Cannot delete image. There are {img.cloning_ops} active clone operations.")
        if state in (S.USED, S.USED_PERS, S.LOCKED_USED, S.LOCKED_USED_PERS):
            return errors.action(f"Cannot delete image. There are {img.running_vms} VMs using it.")
        return None

    # ---------------------------------------------------- simple mutations
    async def _mutate(self, fn, caller: Caller, oid: int, *args, conflict=None) -> int:
        def txn() -> Followup | None:
            img = read_image(oid)
            follow = fn(caller, img, *args)
            write_image(img, conflict)
            return follow

        self._start(await self.db.run(txn))
        return oid

    def _manage(self, caller: Caller, img: Image) -> None:
        req = self._auth(caller)
        req.add(Op.MANAGE, image_auth(img))
        req.check()

    async def enable(self, caller: Caller, oid: int, enable: bool) -> int:
        def apply(caller: Caller, img: Image) -> None:
            self._manage(caller, img)
            verb = "enable" if enable else "disable"
            if img.type == ImageType.BACKUP:
                raise errors.internal(
                    f"Could not {verb} image: Backup images cannot be enabled or disabled.")
            try:
                new = next_state(verb, img.state, running_vms=img.running_vms,
                                 persistent=img.persistent)
            except InvalidTransition:
                raise errors.internal(f"Could not {verb} image: Image cannot be in state "
                                      f"{state_to_str(img.state)}.") from None
            if new != img.state:
                replies.set_state(img, new)

        return await self._mutate(apply, caller, oid)

    async def persistent(self, caller: Caller, oid: int, flag: bool) -> int:
        def apply(caller: Caller, img: Image) -> None:
            self._manage(caller, img)
            if bool(img.persistent) == flag:
                return
            try:
                ds = read_ds(img.datastore_id)
            except errors.OneError:
                raise errors.internal("Datastore no longer exists.") from None
            if ds.ds_mad.lower() == "lvm":
                raise errors.internal(
                    "lvm datastores doesn't support change of image persistency.")
            if img.type in FILE_TYPES:
                raise errors.action("KERNEL, RAMDISK and CONTEXT must be non-persistent")
            if img.type == ImageType.BACKUP:
                raise errors.action("BACKUP images must be persistent")
            if self.config.ds_mad(ds.ds_mad).persistent_only and not flag:
                raise errors.internal("This Datastore only accepts persistent images.")
            what = "persistent" if flag else "non-persistent"
            if not flag and snap.count(img.snapshots):
                raise errors.internal(f"Could not make image {what}: Image has snapshots.")
            if img.state in (S.USED, S.CLONE, S.USED_PERS, S.LOCKED_USED, S.LOCKED_USED_PERS):
                raise errors.internal(f"Could not make image {what}: Image cannot be in state "
                                      f"{state_to_str(img.state)}.")
            img.persistent = int(flag)

        return await self._mutate(apply, caller, oid)

    async def chtype(self, caller: Caller, oid: int, type_text: str) -> int:
        def apply(caller: Caller, img: Image) -> None:
            self._manage(caller, img)
            wanted = type_text.upper() or self.config.default_image_type
            new = _type_of(wanted)
            effective = new if new is not None else ImageType.OS
            current = ImageType(img.type)
            if current == ImageType.BACKUP:
                raise errors.action("Cannot change type for BACKUP images.")
            compatible = DISK_TYPES if current in DISK_TYPES else FILE_TYPES
            if effective not in compatible:
                raise errors.action("Cannot change image type to an incompatible type for the "
                                    "current datastore.")
            if snap.count(img.snapshots) and effective not in (ImageType.OS,
                                                               ImageType.DATABLOCK):
                raise errors.internal("Image with snapshots can be only of type OS or DATABLOCK")
            if new is None:
                # oned builds this text with pointer arithmetic on the current type (QUIRK)
                raise errors.internal("Unknown type "[int(current):])
            img.type = int(new)

        return await self._mutate(apply, caller, oid)

    async def update(self, caller: Caller, oid: int, text: str, append: int) -> int:
        def apply(caller: Caller, img: Image) -> None:
            self._manage(caller, img)
            if append not in (0, 1):
                raise errors.api("Wrong update type")
            try:
                new = Template.parse(text)
            except TemplateError as exc:
                raise errors.internal(f"Cannot update template. {exc.message}") from None
            restricted = self.config.image_restricted_attr
            if append:
                if not caller.is_admin:
                    for attr in restricted:
                        if new.has(attr):
                            raise errors.internal("Cannot update template. User Template "
                                                  f"includes a restricted attribute {attr}")
                img.template.merge(new)
                return
            if not caller.is_admin:
                for attr in restricted:
                    if new.has(attr) and new.get_all(attr) != img.template.get_all(attr):
                        raise errors.internal("Cannot update template. Tried to change "
                                              f"restricted attribute: {attr}")
                    if not new.has(attr) and img.template.has(attr):
                        for value in img.template.get_all(attr):
                            new.add(attr, value)
            img.template = new

        return await self._mutate(apply, caller, oid)

    async def chmod(self, caller: Caller, oid: int, values: list[int]) -> int:
        def apply(caller: Caller, img: Image) -> None:
            img.perms = chmod_plan(caller, self._auth(caller), image_auth(img), img.perms,
                                   values, self.config.enable_other_permissions)

        return await self._mutate(apply, caller, oid)

    async def chown(self, caller: Caller, oid: int, uid: int, gid: int) -> int:
        user = self.identity.user(uid) if uid > -1 else None
        group = self.identity.group(gid) if gid > -1 else None

        def apply(caller: Caller, img: Image) -> None:
            new_user, new_group = chown_plan(self._auth(caller), image_auth(img), img.uid,
                                             img.gid, user, group)
            old_owner = (img.uid, img.gid)
            if new_user is not None:
                other = pools.oid_by_name(ImageRow, img.name, new_user.id)
                if other is not None:
                    raise errors.internal(f"user [{new_user.id}] already owns image [{other}] "
                                          f"with NAME {img.name}")
                img.uid, img.uname = new_user.id, new_user.name
            if new_group is not None:
                img.gid, img.gname = new_group.id, new_group.name
            if (img.uid, img.gid) != old_owner:
                quotas.move(old_owner, (img.uid, img.gid), img.datastore_id, img.size)

        def conflict(img: Image, other: int | None) -> errors.OneError:
            return errors.internal(f"user [{img.uid}] already owns image [{other}] with NAME "
                                   f"{img.name}")

        return await self._mutate(apply, caller, oid, conflict=conflict if user else None)

    async def rename(self, caller: Caller, oid: int, name: str) -> int:
        def apply(caller: Caller, img: Image) -> None:
            if name == img.name:
                return
            self._manage(caller, img)
            other = pools.oid_by_name(ImageRow, name, img.uid)
            if other is not None and other != img.id:
                raise errors.action(f"image cannot be renamed to {name} because it collides "
                                    f"with image {other}")
            err = name_error(name)
            if err:
                raise errors.action(err)
            img.name = name

        def conflict(img: Image, other: int | None) -> errors.OneError:
            return errors.action(f"image cannot be renamed to {img.name} because it "
                                 f"collides with image {other}")

        return await self._mutate(apply, caller, oid, conflict=conflict)

    # ------------------------------------------------------------ snapshots
    async def snapshot(self, caller: Caller, oid: int, sid: int, action: str) -> int:
        verbs = {"snap_delete": "delete snapshot", "snap_revert": "revert to snapshot",
                 "snap_flatten": "flatten snapshot"}

        def apply(caller: Caller, img: Image) -> Followup:
            self._manage(caller, img)
            try:
                ds = read_ds(img.datastore_id)
            except errors.OneError:
                raise errors.action("Datastore no longer exists") from None
            if img.type not in (ImageType.OS, ImageType.DATABLOCK):
                raise errors.action("IMAGES of type KERNEL, RAMDISK, BACKUP and CONTEXT does "
                                    "not have snapshots.")
            if img.state != S.READY:
                raise errors.action(f"Cannot {verbs[action]} in state "
                                    f"{state_to_str(img.state)}")
            if snap.find(img.snapshots, sid) is None:
                raise errors.action("Snapshot does not exist")
            if action == "snap_delete":
                problem = snap.delete_error(img.snapshots, sid)
                if problem:
                    raise errors.action(problem)
            img.target_snapshot = sid
            data = self._drv_data(img, ds)  # serialised before the state is LOCKED
            replies.set_state(img, next_state("snapshot_start", img.state))
            return Followup(action, img.id, ds.ds_mad, data, self._mode(ds.ds_mad), owner=img.uid)

        await self._mutate(apply, caller, oid)
        return sid

    async def restore(self, caller: Caller, oid: int, dst_ds: int, options: str) -> str:
        img = await self.db.run(read_image, oid, False)
        req = self._auth(caller)
        req.add(Op.USE, image_auth(img))
        req.check()
        try:
            ds = await self.db.run(read_ds, dst_ds)
        except errors.OneError:
            raise errors.no_exists("image", dst_ds) from None
        req = self._auth(caller)
        req.add(Op.USE, ObjectAuth("DATASTORE", ds.id, ds.uid, ds.gid, ds.perms, 0,
                                   tuple(ds.clusters)))
        req.check()
        try:
            Template.parse(options)
        except TemplateError as exc:
            raise errors.internal(exc.message) from None
        if img.type != ImageType.BACKUP:
            raise errors.action("Can only restore images of type BACKUP")
        raise errors.action("Could not get datastore driver")

    # ---------------------------------------------------------------- locks
    async def lock(self, caller: Caller, oid: int, level: int, test: bool) -> int:
        def apply(caller: Caller, img: Image) -> None:
            req = self._auth(caller)
            req.add(Op.MANAGE, image_auth(img), check_lock=False)
            req.check()
            img.lock = locks.locked(caller, img.lock, level, test)

        return await self._mutate(apply, caller, oid)

    async def unlock(self, caller: Caller, oid: int) -> int:
        def apply(caller: Caller, img: Image) -> None:
            req = self._auth(caller)
            req.add(Op.MANAGE, image_auth(img), check_lock=False)
            req.check()
            img.lock = locks.unlocked(caller, img.lock)

        return await self._mutate(apply, caller, oid)

    # ------------------------------------------------------- restart safety
    async def reconcile(self, at_start: bool = True) -> list[tuple[int, str]]:
        """Images a previous run left LOCKED, CLONE or DELETE are finished or failed.

        Copies (CP, MKFS, CLONE) and removals (RM) are re-run: the previous
        attempt's process group was killed and our drivers clean up after
        themselves, and RM is idempotent.  An interrupted snapshot operation
        cannot be re-run safely (the file layout is half changed), so the image
        returns to READY with an ERROR text saying so, as a failed one would.

        With several daemons on one database this is also the takeover of a dead
        daemon's work (``at_start`` False: from :meth:`heartbeat`): only actions whose
        owner is gone are touched (store/daemons.py), the dead daemon's driver
        processes are stopped when it ran on this host, and a datastore's orphan files
        are swept only while no live action writes into it.
        """
        if at_start:
            await self._clear_leftovers(self.config.run_location)
        actions, report, dead = await self.db.run(self._reconcile_txn, at_start)
        me = daemons.current()
        for gone in dead:
            log.warn("Daemon {name} (on {host}) stopped renewing its lease: taking over "
                     "its driver work", name=gone.name, host=gone.host)
            if me is not None and gone.host == me.host and gone.var_location != me.var_location:
                await self._clear_leftovers(gone.var_location)  # its run_location
        retaken = {f.image_id for f in actions}
        for ds_id in await self.db.run(_fs_datastore_ids):
            if not await self.db.run(_sweep_if_idle, ds_id, retaken):
                self._unswept.add(ds_id)
        for follow in actions:
            log.info("Reconciling image {i}: running {a} again", i=follow.image_id,
                     a=follow.action)
            self._start(follow)
        return report

    async def _clear_leftovers(self, run_location: str) -> None:
        """Stop the driver processes a dead run recorded under ``run_location``."""
        await deferToThread(reaper.kill_leftover_groups, run_location,
                            self.config.driver.kill_grace)
        await deferToThread(reaper.clear_action_tmp, run_location)

    async def heartbeat(self) -> None:
        """Renew this daemon's lease; take over the work of daemons whose lease ran out.

        A lease that ran out (found so in the database, or no renewal reached it for a
        whole lease) means other daemons may take this one's actions over: they are
        stopped here (their late replies would be dropped anyway)."""
        me = daemons.current()
        if me is None:
            return
        try:
            renewed = await self.db.run(daemons.renew, me, self.peers)
        except Exception:
            renewed = time.monotonic() - self._renewed_at < me.lease
            if renewed:
                raise
        if renewed:
            self._renewed_at = time.monotonic()
        else:
            log.error("The lease of daemon {name} ran out (database unreachable or the "
                      "reactor stalled): stopping its driver actions, other daemons take "
                      "them over", name=me.name)
            for key in self.drivers.running_keys():
                if key[0] in ("image", "vm"):  # ("vm": TM scripts, vm_takeover.py)
                    self.drivers.cancel(key)
        if await self.db.run(daemons.orphaned_work):
            await self.reconcile(at_start=False)
        for ds_id in sorted(self._unswept):
            if await self.db.run(_sweep_if_idle, ds_id, set()):
                self._unswept.discard(ds_id)

    async def check_markers(self) -> None:
        """At start: say which datastores this daemon cannot see (shared storage)."""
        for ds_id in await self.db.run(_fs_datastore_ids):
            hidden = await self._hidden_datastore(None, ds_id)
            if hidden:
                log.error("{text}", text=hidden)

    async def _hidden_datastore(self, image_id: int | None, ds_id: int | None = None) -> str:
        """Why this daemon must not run driver work on the datastore (of the image),
        or "" (README "Several daemons": datastores on storage every daemon sees)."""
        if ds_id is None:
            ds_id = await self.db.run(_image_datastore, image_id)
        if ds_id is None or ds_id in self._visible:
            return ""
        text = await self.db.run(_check_marker, ds_id,
                                 daemons.current().name if daemons.current() else "")
        if not text:
            self._visible.add(ds_id)
        return text

    def _reconcile_txn(self, at_start: bool = True) -> tuple[
            list[Followup], list[tuple[int, str]], list[daemons.Dead]]:
        daemons.serialise_takeovers()
        dead = daemons.bury_dead(here=at_start)
        live = daemons.live_names()
        daemons.drop_dead_monitors(live)
        owners = daemons.claims()
        states = [int(S.LOCKED), int(S.LOCKED_USED), int(S.LOCKED_USED_PERS), int(S.CLONE),
                  int(S.DELETE), int(S.USED)]
        stuck: list[Image] = []
        for (body,) in ImageRow.select(ImageRow.body).tuples().iterator():
            img = image_from(body)
            if img.state in states:
                stuck.append(img)
        actions: list[Followup] = []
        report: list[tuple[int, str]] = []
        by_id = {img.id: img for img in stuck}
        for img in stuck:
            try:
                ds = read_ds(img.datastore_id)
            except errors.OneError:
                ds = None
            state = S(img.state)
            if owners.get(("image", img.id)) in live:
                continue  # a live daemon runs its action
            if state in LOCKED_STATES:
                if (img.template.get("SAVE_AS_HOT") or "").upper() == "YES":
                    vm = img.template.get("SAVED_VM_ID") or ""
                    if vm.isdigit() and owners.get(("vm", int(vm))) in live:
                        continue  # the VM's save-as runs on a live daemon (no image claim)
                    # a VM disk save-as (domain/vm_saveas.py) cannot be redone from here
                    replies.set_state(img, S.ERROR)
                    replies.set_error(img, "Disk save-as was interrupted by a restart of "
                                      "oned-images")
                    report.append((img.id, "error"))
                elif img.target_snapshot >= 0:
                    sid = img.target_snapshot
                    img.target_snapshot = -1
                    replies.set_state(img, S.READY)
                    replies.set_error(img, f"Snapshot operation on snapshot {sid} was "
                                      "interrupted by a restart of oned-images; check the "
                                      "image files before using it")
                    report.append((img.id, "snapshot-interrupted"))
                elif ds is None:
                    replies.set_state(img, S.ERROR)
                    replies.set_error(img, "Datastore no longer exists")
                    report.append((img.id, "error"))
                else:
                    action = "clone" if img.cloning_id >= 0 else ("cp" if img.path else "mkfs")
                    if action == "clone" and img.cloning_id not in by_id and \
                            pools.body(ImageRow, img.cloning_id) is None:
                        replies.set_state(img, S.ERROR)
                        replies.set_error(img, f"Error cloning from Image {img.cloning_id}: "
                                          "source image no longer exists")
                        report.append((img.id, "error"))
                    else:
                        owner = self.identity.users.get(img.uid)
                        admin = img.uid == 0 or (owner is not None and 0 in owner.groups)
                        staged = staged_env(self.config, img.path) if action == "cp" else {}
                        # (whether an admin's allocate skipped the check is not stored)
                        extra = {**staged, **_copy_env(self.config, ds)} if action == "cp" else {}
                        actions.append(Followup(action, img.id, ds.ds_mad,
                                                self._drv_data(img, ds), self._mode(ds.ds_mad),
                                                env={**url_policy(admin), **extra},
                                                owner=img.uid,
                                                cleanup=staged.get("ONED_STAGED_FILE")))
                        report.append((img.id, action))
            elif state == S.DELETE:
                if ds is None:
                    delete_row(img)
                    report.append((img.id, "removed"))
                    continue
                actions.append(Followup("rm", img.id, ds.ds_mad, self._drv_data(img, ds),
                                        self._mode(ds.ds_mad), owner=img.uid))
                report.append((img.id, "rm"))
                continue
            elif state in (S.CLONE, S.USED) and img.running_vms == 0:
                live = [c for c in img.clones
                        if c in by_id and by_id[c].state in LOCKED_STATES
                        and by_id[c].cloning_id == img.id]
                if live == sorted(img.clones) and len(live) == img.cloning_ops:
                    continue
                img.clones = live
                img.cloning_ops = len(live)
                if not live:
                    replies.set_state(img, S.READY)
                    report.append((img.id, "released"))
                else:
                    # some clones are gone: count only the live ones, or the last of
                    # them would leave the source USED/CLONE for ever
                    report.append((img.id, "recounted"))
            else:
                continue
            write_image(img)
        return actions, report, dead


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_stat_counter = iter(range(1, 2**31))


def _next_stat_id() -> int:
    return next(_stat_counter)


def _fs_datastore_ids() -> list[int]:
    """The datastores whose driver keeps files in BASE_PATH."""
    return sorted(read_ds_body(body).id for (body,) in DatastoreRow.select(DatastoreRow.body)
                  .tuples() if read_ds_body(body).ds_mad == "fs")


def _image_datastore(oid: int) -> int | None:
    row = ImageRow.select(ImageRow.datastore_id).where(ImageRow.oid == oid).tuples().first()
    return row[0] if row else None


def _sweep_if_idle(ds_id: int, retaken: set[int]) -> bool:
    """Clean the datastore's orphan files (reaper.sweep_orphans) unless an action that
    is not among ``retaken`` (about to be re-run) holds an image of it; False then.  The datastore's
    row stays locked meanwhile, so no copy can start and create a file under the sweep
    (allocate and clone lock it first)."""
    try:
        ds = read_ds(ds_id, lock=True)
    except errors.OneError:
        return True
    from oned_images.store.models import DriverClaimRow

    busy = (DriverClaimRow.select(DriverClaimRow.oid)
            .join(ImageRow, on=(ImageRow.oid == DriverClaimRow.oid))
            .where((DriverClaimRow.kind == "image") & (ImageRow.datastore_id == ds_id))
            .tuples())
    if any(oid not in retaken for (oid,) in busy):
        return False  # a live action writes into it: a later heartbeat sweeps
    sources = {img.source for img in (image_from(b) for (b,) in
               ImageRow.select(ImageRow.body).where(ImageRow.datastore_id == ds_id).tuples())
               if img.source}
    reaper.sweep_orphans(ds.base_path, ds_id, sources)
    return True


def marker_path(base_path: str, ds_id: int) -> str:
    """The marker file of a datastore (README "Several daemons"): beside BASE_PATH, as
    lost+found, so neither the driver, the monitor nor fsck ever sees it in BASE_PATH."""
    base = os.path.normpath(base_path)
    return os.path.join(os.path.dirname(base), ".markers", str(ds_id))


def _check_marker(ds_id: int, daemon: str) -> str:
    """"" when this daemon sees the datastore's files; else why not.  The first daemon
    to look writes the marker and its token (in this transaction, so a second one
    waits for it); every other compares the file with the token."""
    try:
        ds = read_ds(ds_id)
    except errors.OneError:
        return ""
    if ds.ds_mad != "fs" or not ds.base_path:
        return ""
    path = marker_path(ds.base_path, ds_id)
    row = DatastoreMarkerRow.get_or_none(DatastoreMarkerRow.oid == ds_id)
    if row is None:
        token = os.urandom(16).hex()
        if DatastoreMarkerRow.insert(oid=ds_id, token=token).on_conflict_ignore().execute():
            os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
            with open(path, "w", encoding="utf-8") as out:
                out.write(token + "\n")
            return ""
        row = DatastoreMarkerRow.get(DatastoreMarkerRow.oid == ds_id)
    try:
        with open(path, encoding="utf-8") as marker:
            found = marker.read().strip()
    except OSError as exc:
        found = f"({exc.strerror})"
    if found == row.token:
        return ""
    return (f"Datastore {ds_id} is not visible from daemon {daemon or 'this daemon'}: "
            f"{path} is missing or belongs to another copy ({found[:40] or 'empty'}); "
            "every daemon must see each datastore's BASE_PATH at the same path "
            "(shared storage, README \"Several daemons\")")
