"""Datastore verbs: allocate, delete, update, chmod, chown, rename, enable, info.

Datastores are few, so visibility filtering happens in Python over all rows;
images keep a copy of their datastore's NAME, so rename rewrites them in the
same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from oned_images import errors
from oned_images.config import DaemonConfig
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
from oned_images.model.objects import Datastore, Permissions
from oned_images.store import pools
from oned_images.store.database import Database
from oned_images.store.models import DatastoreRow, ImageRow
from oned_images.template import Template, TemplateError
from oned_images.xmldoc import image as imagedoc
from oned_images.xmldoc.datastore import datastore_from, datastore_xml

DS_TYPES = {"IMAGE_DS": 0, "SYSTEM_DS": 1, "FILE_DS": 2, "BACKUP_DS": 3}
#: Image::str_to_disk_type.
DISK_TYPES = {"FILE": 0, "CDROM": 1, "BLOCK": 2, "RBD": 3, "RBD_CDROM": 4, "GLUSTER": 5,
              "GLUSTER_CDROM": 6, "SHEEPDOG": 7, "SHEEPDOG_CDROM": 8, "ISCSI": 9}
#: Datastore::set_ds_disk_type: what each datastore type accepts.
VALID_DISK_TYPES = {
    0: ({"FILE", "BLOCK", "ISCSI", "RBD", "GLUSTER", "SHEEPDOG"},
        "Invalid DISK_TYPE for an Image Datastore."),
    1: ({"FILE", "RBD", "BLOCK"}, "Invalid DISK_TYPE for a System Datastore."),
}
FIRST_DS_ID = 100
DEFAULT_CLUSTER_ID = 0


def ds_auth(ds: Datastore) -> ObjectAuth:
    return ObjectAuth("DATASTORE", ds.id, ds.uid, ds.gid, ds.perms, 0, tuple(ds.clusters))


def ds_meta(ds: Datastore) -> pools.RowMeta:
    return pools.RowMeta(ds.name, ds.uid, ds.gid, ds.perms)


def read_ds(oid: int, lock: bool = False) -> Datastore:
    body = pools.body(DatastoreRow, oid, lock=lock)
    if body is None:
        raise errors.no_exists("datastore", oid)
    return datastore_from(body)


def write_ds(ds: Datastore) -> None:
    pools.update(DatastoreRow, ds.id, ds_meta(ds), datastore_xml(ds))


def image_ids(ds_id: int) -> list[int]:
    """A datastore's IMAGES, from the image rows (the stored body keeps it empty)."""
    return [r[0] for r in ImageRow.select(ImageRow.oid).where(ImageRow.datastore_id == ds_id)
            .order_by(ImageRow.oid).tuples()]


def served_xml(ds: Datastore) -> str:
    ds.images = image_ids(ds.id)
    return datastore_xml(ds)


def _served_pool(desc: bool = True) -> list[str]:
    by_ds: dict[int, list[int]] = {}
    for oid, ds_id in ImageRow.select(ImageRow.oid, ImageRow.datastore_id).tuples():
        by_ds.setdefault(ds_id, []).append(oid)
    out = []
    for body in pools.bodies(DatastoreRow, None, desc):
        ds = datastore_from(body)
        ds.images = by_ds.get(ds.id, [])
        out.append(datastore_xml(ds))
    return out


def base_path(config: DaemonConfig, oid: int) -> str:
    return f"{config.datastore_location.rstrip('/')}/{oid}"


def _target(value: str) -> str:
    return value.upper()


def _apply_tm_conf(tmpl: Template, ds_type: int, conf: dict[str, str]) -> None:
    """Datastore::set_tm_mad: what TM_MAD_CONF imposes on the template.

    It runs at allocate and at every update whose template names a TM_MAD (checked by
    tm_mad_error first), and its values replace the template's.
    """
    if ds_type == 3:
        return
    if ds_type == 1:
        tmpl.set("SHARED", "YES" if conf.get("SHARED", "").upper() == "YES" else "NO")
        tmpl.set("DS_MIGRATE", "NO" if conf.get("DS_MIGRATE", "").upper() == "NO" else "YES")
        tmpl.remove("LN_TARGET")
        tmpl.remove("CLONE_TARGET")
    else:
        modes = conf.get("TM_MAD_SYSTEM") or ""
        if modes:
            tmpl.set("TM_MAD_SYSTEM", modes)
        for mode in (m.strip().upper() for m in modes.split(",")):
            if not mode:
                continue
            for key, conv in ((f"LN_TARGET_{mode}", _target), (f"CLONE_TARGET_{mode}", _target),
                              (f"DISK_TYPE_{mode}", str)):
                if conf.get(key):
                    tmpl.set(key, conv(conf[key]))
        for key, conv in (("LN_TARGET", _target), ("CLONE_TARGET", _target), ("DRIVER", str),
                          ("DISK_TYPE", str)):
            if conf.get(key):
                tmpl.set(key, conv(conf[key]))
        tmpl.remove("SHARED")
    tmpl.set("ALLOW_ORPHANS", conf.get("ALLOW_ORPHANS") or "NO")
    # oned 7.0.2's stock "local" has no PERSISTENT_SNAPSHOTS, yet its datastores show YES.
    tmpl.set("PERSISTENT_SNAPSHOTS", conf.get("PERSISTENT_SNAPSHOTS") or "YES")


def ds_mad_error(config: DaemonConfig, ds_type: int, ds_mad: str,
                 tmpl: Template) -> str | None:
    """Datastore::set_ds_mad's refusals, at allocate and at every update: the DS_MAD
    needs a DS_MAD_CONF (the file's or a built-in one, config.BUILTIN_DS_MAD_CONF) and
    the template its REQUIRED_ATTRS; a system datastore has no DS_MAD."""
    if ds_type == 1:
        return None
    if not config.ds_mad_defined(ds_mad):
        return f'DS_MAD named "{ds_mad}" is not defined in oned.conf'
    for attr in config.ds_mad(ds_mad).required_attrs:
        if not tmpl.get(attr.upper()):
            return (f'Datastore template is missing the "{attr.upper()}" attribute or '
                    "it's empty.")
    return None


def tm_mad_error(config: DaemonConfig, tm_mad: str) -> str | None:
    """Datastore::set_tm_mad's refusal: a TM_MAD needs a TM_MAD_CONF (the file's or a
    built-in one, config.BUILTIN_TM_MAD_CONF), as in oned; the TM_MAD -d list is
    checked only when a transfer runs (driver/tm.py)."""
    if config.tm_mad(tm_mad):
        return None
    return f'TM_MAD named "{tm_mad}" is not defined in oned.conf'


def disk_type_error(ds_type: int, name: str) -> str | None:
    """Datastore::set_ds_disk_type's refusals (file and backup datastores take any)."""
    if ds_type not in VALID_DISK_TYPES:
        return None
    if name not in DISK_TYPES:
        return "Unknown DISK_TYPE in template."
    valid, message = VALID_DISK_TYPES[ds_type]
    return None if name in valid else message


def build_datastore(config: DaemonConfig, oid: int, tmpl: Template, owner: Caller,
                    perms: Permissions) -> Datastore:
    """Turn an allocate template into a Datastore (Datastore::insert's rules).

    Failures are INTERNAL with Datastore::insert's texts (DatastoreAllocate).
    """
    name = tmpl.get("NAME") or ""
    err = name_error(name)
    if err:
        raise errors.internal(err)
    ds_type_name = (tmpl.get("TYPE") or "IMAGE_DS").upper()
    # Datastore::str_to_type: anything unknown is an IMAGE_DS.
    ds_type = DS_TYPES.get(ds_type_name, 0)
    ds_mad = tmpl.get("DS_MAD") or ""
    tm_mad = tmpl.get("TM_MAD") or ""
    if ds_type == 1:
        if ds_mad:
            raise errors.internal("SYSTEM datastores cannot have DS_MAD defined.")
        ds_mad = "-"
    elif not ds_mad:
        raise errors.internal("No DS_MAD in template.")
    err = ds_mad_error(config, ds_type, ds_mad, tmpl)
    if err:
        raise errors.internal(err)
    tmpl = tmpl.copy()
    if ds_type == 3:
        tm_mad = "-"
    else:
        if not tm_mad:
            raise errors.internal("No TM_MAD in template.")
        err = tm_mad_error(config, tm_mad)
        if err:
            raise errors.internal(err)
        _apply_tm_conf(tmpl, ds_type, config.tm_mad(tm_mad))
    tmpl.remove("NAME")
    tmpl.remove("BASE_PATH")
    tmpl.set("TYPE", [k for k, v in DS_TYPES.items() if v == ds_type][0])
    disk_type_name = (tmpl.get("DISK_TYPE") or "FILE").upper()
    tmpl.remove("DISK_TYPE")
    err = disk_type_error(ds_type, disk_type_name)
    if err:
        raise errors.internal(err)
    if ds_type in VALID_DISK_TYPES:
        tmpl.set("DISK_TYPE", disk_type_name)
        disk_type = DISK_TYPES[disk_type_name]
    else:
        disk_type = 0
    if not tmpl.get("SAFE_DIRS") and not tmpl.get("RESTRICTED_DIRS"):
        tmpl.set("SAFE_DIRS", "/var/tmp")
        tmpl.set("RESTRICTED_DIRS", "/")
    return Datastore(
        id=oid, uid=owner.uid, gid=owner.gid, uname=owner.uname, gname=owner.gname,
        name=name, perms=perms, ds_mad=ds_mad, tm_mad=tm_mad,
        base_path=base_path(config, oid), type=ds_type, disk_type=disk_type,
        template=tmpl,
    )


@dataclass
class Datastores:
    db: Database
    config: DaemonConfig
    identity: Identity
    #: called with a datastore id after allocate, to monitor it at once.
    on_created: Callable[[int], None] | None = None

    async def get(self, oid: int) -> Datastore:
        return await self.db.read(read_ds, oid)

    async def allocate(self, caller: Caller, text: str, cluster_id: int) -> int:
        try:
            tmpl = Template.parse(text)
        except TemplateError as exc:
            raise errors.internal(exc.message) from None
        # DatastoreAllocate::get_cluster_id: -1 means the default cluster 0, the
        # only cluster this daemon has.
        if cluster_id == -1:
            cluster_id = DEFAULT_CLUSTER_ID
        if cluster_id != DEFAULT_CLUSTER_ID:
            raise errors.no_exists("cluster", cluster_id)
        req = AuthRequest(caller, self.identity.acl)
        req.add(Op.CREATE, ObjectAuth("DATASTORE", -1))
        req.add(Op.ADMIN, ObjectAuth("CLUSTER", DEFAULT_CLUSTER_ID, -1, -1,
                                     Permissions([1, 1, 0, 0, 0, 0, 0, 0, 0])))
        req.check()
        perms = new_object_perms(caller.uid, caller.gid, self.identity.umask_for(caller),
                                 self.config.enable_other_permissions)
        # Datastore's constructor: set_umask, then GROUP_U is always granted.
        perms.bits[3] = 1
        oid = await self.db.run(self._insert, tmpl, caller, perms)
        if self.on_created:
            self.on_created(oid)
        return oid

    def _insert(self, tmpl: Template, caller: Caller, perms: Permissions) -> int:
        # DatastorePool::allocate: NAME, duplicates, then Datastore::insert.
        name = tmpl.get("NAME") or ""
        err = name_error(name)
        if err:
            raise errors.internal(err)
        existing = pools.oid_by_name(DatastoreRow, name)
        if existing is not None:
            raise errors.internal(f"NAME is already taken by DATASTORE {existing}.")
        oid = pools.next_oid("datastore_pool", FIRST_DS_ID)
        ds = build_datastore(self.config, oid, tmpl, caller, perms)
        pools.insert(DatastoreRow, oid, ds_meta(ds), datastore_xml(ds))
        return oid

    async def delete(self, caller: Caller, oid: int) -> int:
        ds = await self.get(oid)
        req = AuthRequest(caller, self.identity.acl)
        req.add(Op.ADMIN, ds_auth(ds))
        req.check()

        def txn() -> None:
            read_ds(oid, lock=True)
            if image_ids(oid):
                raise errors.action(f"Cannot delete datastore. Datastore {oid} is not empty.")
            pools.delete(DatastoreRow, oid)

        await self.db.run(txn)
        return oid

    async def info(self, caller: Caller, oid: int) -> str:
        ds = await self.get(oid)
        req = AuthRequest(caller, self.identity.acl)
        req.add(Op.USE, ds_auth(ds), check_lock=False)
        req.check()
        return await self.db.read(served_xml, ds)

    async def pool_info(self, caller: Caller) -> str:
        bodies = await self.db.read(_served_pool, self.identity.list_desc(caller))
        if not caller.is_admin:
            visible = []
            for body in bodies:
                req = AuthRequest(caller, self.identity.acl)
                req.add(Op.USE, ds_auth(datastore_from(body)), check_lock=False)
                if not req.failures:
                    visible.append(body)
            bodies = visible
        return imagedoc.pool_xml("DATASTORE_POOL", bodies)

    async def update(self, caller: Caller, oid: int, text: str, append: int) -> int:
        ds = await self.get(oid)
        req = AuthRequest(caller, self.identity.acl)
        req.add(Op.MANAGE, ds_auth(ds))
        req.check()
        if append not in (0, 1):
            raise errors.api("Wrong update type")
        try:
            tmpl = Template.parse(text)
        except TemplateError as exc:
            raise errors.internal(f"Cannot update template. {exc.message}") from None

        def txn() -> None:
            current = read_ds(oid, lock=True)
            if append:
                current.template.merge(tmpl)
            else:
                current.template = tmpl.copy()
            t = current.template
            # Datastore::post_update_template: type, disk type and drivers follow the
            # template, and the template always shows the resulting values.
            ds_type = (t.get("TYPE") or "").upper()
            if current.id == 0:
                current.type = 1
            elif ds_type and current.type != 3:
                current.type = DS_TYPES.get(ds_type, 0)  # Datastore::str_to_type
            t.set("TYPE", [k for k, v in DS_TYPES.items() if v == current.type][0])
            disk = (t.get("DISK_TYPE") or "").upper()
            if disk:
                err = disk_type_error(current.type, disk)
                if err:
                    raise errors.internal(f"Cannot update template. {err}")
                # files and backup datastores are always FILE
                current.disk_type = DISK_TYPES[disk] if current.type in VALID_DISK_TYPES else 0
            if current.type in VALID_DISK_TYPES:
                t.set("DISK_TYPE", [k for k, v in DISK_TYPES.items()
                                    if v == current.disk_type][0])
            else:
                t.remove("DISK_TYPE")
            if current.type == 1:
                t.remove("DS_MAD")
            else:
                current.ds_mad = t.get("DS_MAD") or current.ds_mad
                t.set("DS_MAD", current.ds_mad)
            new_tm_mad = t.get("TM_MAD") or ""
            if new_tm_mad and current.type != 3:
                err = tm_mad_error(self.config, new_tm_mad)
                if err:
                    raise errors.internal(f"Cannot update template. {err}")
                _apply_tm_conf(t, current.type, self.config.tm_mad(new_tm_mad))
                current.tm_mad = new_tm_mad
            t.set("TM_MAD", current.tm_mad)
            err = ds_mad_error(self.config, current.type, current.ds_mad, t)
            if err:
                raise errors.internal(f"Cannot update template. {err}")
            write_ds(current)

        await self.db.run(txn)
        return oid

    async def chmod(self, caller: Caller, oid: int, values: list[int]) -> int:
        ds = await self.get(oid)
        req = AuthRequest(caller, self.identity.acl)
        perms = chmod_plan(caller, req, ds_auth(ds), ds.perms, values,
                           self.config.enable_other_permissions)

        def txn() -> None:
            current = read_ds(oid, lock=True)
            current.perms = perms
            write_ds(current)

        await self.db.run(txn)
        return oid

    async def chown(self, caller: Caller, oid: int, uid: int, gid: int) -> int:
        user = self.identity.user(uid) if uid > -1 else None
        group = self.identity.group(gid) if gid > -1 else None
        ds = await self.get(oid)
        user, group = chown_plan(AuthRequest(caller, self.identity.acl), ds_auth(ds), ds.uid,
                                 ds.gid, user, group)

        def txn() -> None:
            current = read_ds(oid, lock=True)
            if user is not None:
                current.uid, current.uname = user.id, user.name
            if group is not None:
                current.gid, current.gname = group.id, group.name
            write_ds(current)

        await self.db.run(txn)
        return oid

    async def rename(self, caller: Caller, oid: int, name: str) -> int:
        ds = await self.get(oid)
        if name == ds.name:
            return oid
        req = AuthRequest(caller, self.identity.acl)
        req.add(Op.MANAGE, ds_auth(ds))
        req.check()
        err = name_error(name)
        if err:
            raise errors.action(err)

        def txn() -> None:
            other = pools.oid_by_name(DatastoreRow, name)
            if other is not None and other != oid:
                raise errors.action(
                    f"datastore cannot be renamed to {name} because it collides with "
                    f"datastore {other}")
            current = read_ds(oid, lock=True)
            current.name = name
            write_ds(current)
            for image_id in image_ids(oid):
                body = pools.body(ImageRow, image_id, lock=True)
                if body is None:
                    continue
                img = imagedoc.image_from(body)
                img.datastore = name
                pools.update(ImageRow, img.id, pools.RowMeta(img.name, img.uid, img.gid,
                                                               img.perms),
                             imagedoc.image_xml(img))

        await self.db.run(txn)
        return oid

    async def enable(self, caller: Caller, oid: int, enable: bool) -> int:
        ds = await self.get(oid)
        req = AuthRequest(caller, self.identity.acl)
        req.add(Op.MANAGE, ds_auth(ds))
        req.check()
        if ds.type != 1:
            raise errors.internal("Only SYSTEM_DS can be disabled or enabled")

        def txn() -> None:
            current = read_ds(oid, lock=True)
            current.state = 0 if enable else 1
            write_ds(current)

        await self.db.run(txn)
        return oid

    async def record_monitor(self, oid: int, total: int, free: int, used: int,
                             late: Callable[[], int] = lambda: 0) -> None:
        """Store a MONITOR result.  ``late`` gives the MB charged by copies that ended
        after the run started (their files may be missing from its figures); it is read
        under the row lock, which the charging transaction holds until it commits, so a
        charge is either seen here or applied on top of what this records."""
        def txn() -> None:
            body = pools.body(DatastoreRow, oid, lock=True)
            if body is None:
                return
            current = datastore_from(body)
            extra = late()
            current.total_mb, current.free_mb, current.used_mb = \
                total, max(free - extra, 0), used + extra
            write_ds(current)

        await self.db.run(txn)


def bootstrap_datastores(config: DaemonConfig) -> None:
    """Datastores 0 (system), 1 (default) and 2 (files) of a fresh install."""
    owner = Caller(0, 0, frozenset({0}), "oneadmin", "oneadmin")
    perms = Permissions([1, 1, 0, 1, 0, 0, 0, 0, 0])
    # DatastorePool's bootstrap templates: everything else comes from TM_MAD_CONF.
    specs = [
        (0, 'NAME="system"\nTYPE="SYSTEM_DS"\nTM_MAD="local"'),
        (1, 'NAME="default"\nTYPE="IMAGE_DS"\nDS_MAD="fs"\nTM_MAD="local"'),
        (2, 'NAME="files"\nTYPE="FILE_DS"\nDS_MAD="fs"\nTM_MAD="local"'),
    ]
    for oid, text in specs:
        ds = build_datastore(config, oid, Template.parse(text), owner, perms)
        pools.insert(DatastoreRow, oid, ds_meta(ds), datastore_xml(ds))
    pools.next_oid("datastore_pool", FIRST_DS_ID - 1)


def now() -> int:
    return int(time.time())
