"""VM template verbs (vms.md §4): allocate, info, update, delete (recursive), clone
(recursive), chmod (recursive), chown, rename, lock, unlock and the pool listing, plus
the image references of templates' DISKs (recursive verbs, ``oneimage orphans``).

Instantiate creates a virtual machine: it is Vms.instantiate (domain/vms.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import peewee
from twisted.logger import Logger

from oned_images import errors
from oned_images.config import DaemonConfig
from oned_images.domain import locks
from oned_images.domain.disks import datastore_disk_attribute, image_disk_attribute
from oned_images.domain.identity import Identity
from oned_images.domain.images import image_auth
from oned_images.domain.names import name_error
from oned_images.domain.ownership import chmod_plan, chown_plan
from oned_images.domain.permissions import (
    AuthRequest,
    Caller,
    ObjectAuth,
    Op,
    new_object_perms,
)
from oned_images.domain.pool_query import info_row, pool_bodies, pool_filter, row_auth
from oned_images.model.objects import Permissions, VmTemplate
from oned_images.store import pools
from oned_images.store.database import Database
from oned_images.store.models import DatastoreRow, ImageRow, TemplateRow
from oned_images.template import Template, TemplateError
from oned_images.xmldoc.datastore import datastore_from
from oned_images.xmldoc.image import image_from
from oned_images.xmldoc.served import Served, rpc_bytes
from oned_images.xmldoc.template_doc import vmtemplate_from, vmtemplate_xml

log = Logger(namespace="ReM")

OBJ = "virtual machine template"
#: oned.conf's stock VM_RESTRICTED_ATTR (only oneadmin's group may set them).
VM_RESTRICTED_ATTR = (
    "CONTEXT/FILES", "NIC/MAC", "NIC/VLAN_ID", "NIC/BRIDGE", "NIC_DEFAULT/MAC",
    "NIC_DEFAULT/VLAN_ID", "NIC_DEFAULT/BRIDGE", "DISK/TOTAL_BYTES_SEC", "DISK/READ_BYTES_SEC",
    "DISK/WRITE_BYTES_SEC", "DISK/TOTAL_IOPS_SEC", "DISK/READ_IOPS_SEC",
    "DISK/WRITE_IOPS_SEC", "DISK/ORIGINAL_SIZE", "CPU_COST", "MEMORY_COST", "DISK_COST",
    "PCI", "USER_INPUTS",
)
#: what a recursive clone drops from a DISK before it names the new image by id
CLONE_DROPS = ("IMAGE", "IMAGE_UNAME", "IMAGE_UID", "OPENNEBULA_MANAGED")


# ------------------------------------------------------------------ row access
def template_auth(t: VmTemplate) -> ObjectAuth:
    return ObjectAuth("TEMPLATE", t.id, t.uid, t.gid, t.perms, t.lock.locked if t.lock else 0)


def _meta(t: VmTemplate) -> pools.RowMeta:
    return pools.RowMeta(t.name, t.uid, t.gid, t.perms)


def read_template(oid: int, lock: bool = False) -> VmTemplate:
    body = pools.body(TemplateRow, oid, lock=lock)
    if body is None:
        raise errors.no_exists(OBJ, oid)
    return vmtemplate_from(body)


def write_template(t: VmTemplate, conflict: Callable[[VmTemplate, int | None],
                                                      errors.OneError] | None = None) -> None:
    """A write that changes NAME or UID runs in a savepoint: a concurrent transaction's
    row only shows up as the unique index's refusal (see images.write_image)."""
    if conflict is None:
        pools.update(TemplateRow, t.id, _meta(t), vmtemplate_xml(t))
        return
    try:
        with TemplateRow._meta.database.atomic():
            pools.update(TemplateRow, t.id, _meta(t), vmtemplate_xml(t))
    except peewee.IntegrityError:
        raise conflict(t, pools.oid_by_name(TemplateRow, t.name, t.uid)) from None


def restricted_attr(tmpl: Template) -> str | None:
    """The first VM_RESTRICTED_ATTR the template sets, named as oned names it: the
    sub-attribute alone for vector attributes (vms.md §4.2)."""
    for attr in VM_RESTRICTED_ATTR:
        top, _, sub = attr.partition("/")
        if not sub:
            if tmpl.has(top):
                return top
            continue
        for value in tmpl.get_all(top):
            if isinstance(value, dict) and sub in value:
                return sub
    return None


# ------------------------------------------------------- DISK image references
def _disks(tmpl: Template) -> list[dict[str, str]]:
    """Every DISK, volatile ones too (a DISK given as a plain value counts as empty)."""
    return [d if isinstance(d, dict) else {} for d in tmpl.get_all("DISK")]


def disk_image_id(disk: dict[str, str], default_uid: int,
                  uid_of: Callable[[str], int | None],
                  image_named: Callable[[str, int], int | None]) -> int | None:
    """The image a DISK names (vms.md §2.2): IMAGE_ID, else IMAGE owned by IMAGE_UID,
    else by the user IMAGE_UNAME names, else by ``default_uid``; None for a volatile
    DISK or a name that resolves to nothing."""
    raw = disk.get("IMAGE_ID")
    if raw is not None:
        try:
            return int(raw.strip())
        except ValueError:
            return None
    name = disk.get("IMAGE")
    if name is None:
        return None
    uid: int | None = default_uid
    if disk.get("IMAGE_UID") is not None:
        try:
            uid = int(disk["IMAGE_UID"].strip())
        except ValueError:
            return None
    elif disk.get("IMAGE_UNAME") is not None:
        uid = uid_of(disk["IMAGE_UNAME"])
    if uid is None:
        return None
    return image_named(name, uid)


def _image_named(name: str, uid: int) -> int | None:
    return pools.oid_by_name(ImageRow, name, uid)


def template_image_ids(tmpl: Template, default_uid: int,
                       uid_of: Callable[[str], int | None]) -> list[int]:
    """VMTemplate::get_image_ids: the images the DISKs name, each once, in DISK order
    (runs inside a DB transaction: names are looked up in image_pool)."""
    out: list[int] = []
    for disk in _disks(tmpl):
        iid = disk_image_id(disk, default_uid, uid_of, _image_named)
        if iid is not None and iid not in out:
            out.append(iid)
    return out


def orphan_check_refs(bodies: Iterable[str]) -> tuple[set[int], set[tuple[str, str]]]:
    """What ``oneimage orphans`` counts as a reference (vms.md §4.10): the IMAGE_IDs of
    every template DISK, and the (IMAGE, IMAGE_UNAME) pairs of DISKs that have both.
    An image is an orphan unless its id is in the first set or its (NAME, UNAME) in the
    second; DISKs naming an image by IMAGE alone or IMAGE + IMAGE_UID do not count."""
    ids: set[int] = set()
    names: set[tuple[str, str]] = set()
    for body in bodies:
        for disk in _disks(vmtemplate_from(body).template):
            raw = disk.get("IMAGE_ID")
            if raw is not None:
                try:
                    ids.add(int(float(raw.strip())))  # XPath compares numbers
                except ValueError:
                    pass
            if disk.get("IMAGE") is not None and disk.get("IMAGE_UNAME") is not None:
                names.add((disk["IMAGE"], disk["IMAGE_UNAME"]))
    return ids, names


def referenced_image_ids() -> set[int]:
    """The ids of the images some template references by the rule of
    :func:`orphan_check_refs`: ``oneimage orphans`` lists every other image except
    BACKUP ones.  Runs inside a DB transaction."""
    ids, names = orphan_check_refs(pools.bodies(TemplateRow))
    out = set()
    for body in pools.bodies(ImageRow):
        img = image_from(body)
        if img.id in ids or (img.name, img.uname) in names:
            out.add(img.id)
    return out


# ---------------------------------------------------------------------- verbs
@dataclass
class Templates:
    db: Database
    config: DaemonConfig
    identity: Identity
    #: the image verbs the recursive flags reuse (ImageManager)
    images: Any

    def _auth(self, caller: Caller) -> AuthRequest:
        return AuthRequest(caller, self.identity.acl)

    def uid_of(self, uname: str) -> int | None:
        """A user name's id from the identity cache (IMAGE_UNAME of a DISK), or None."""
        for user in self.identity.users.values():
            if user.name == uname:
                return user.id
        return None

    def _perms(self, caller: Caller) -> Permissions:
        return new_object_perms(caller.uid, caller.gid, self.identity.umask_for(caller),
                                self.config.enable_other_permissions)

    def _insert(self, caller: Caller, name: str, tmpl: Template, perms: Permissions,
                taken: Callable[[str], errors.OneError]) -> int:
        """TemplatePool::allocate in one transaction: NAME, per-owner uniqueness, id."""
        err = name_error(name)
        if err:
            raise taken(err)
        other = pools.oid_by_name(TemplateRow, name, caller.uid)
        if other is not None:
            raise taken(f"NAME is already taken by TEMPLATE {other}.")
        oid = pools.next_oid("template_pool")
        t = VmTemplate(oid, caller.uid, caller.gid, caller.uname, caller.gname, name,
                       perms=perms, regtime=int(time.time()), template=tmpl)
        try:
            with TemplateRow._meta.database.atomic():
                pools.insert(TemplateRow, oid, _meta(t), vmtemplate_xml(t))
        except peewee.IntegrityError:
            other = pools.oid_by_name(TemplateRow, name, caller.uid)
            raise taken(f"NAME is already taken by TEMPLATE {other}.") from None
        return oid

    async def allocate(self, caller: Caller, text: str) -> int:
        try:
            tmpl = Template.parse(text, replace_mode=False)
        except TemplateError as exc:
            raise errors.internal(exc.message) from None
        req = self._auth(caller)
        req.add(Op.CREATE, ObjectAuth("TEMPLATE", -1))
        req.check()
        if not caller.is_admin:
            attr = restricted_attr(tmpl)
            if attr:
                raise errors.authorization(f"VM Template includes a restricted attribute {attr}")
        name = tmpl.get("NAME") or ""
        tmpl.remove("NAME")
        return await self.db.run(self._insert, caller, name, tmpl, self._perms(caller),
                                 errors.internal)

    async def get(self, oid: int) -> VmTemplate:
        return await self.db.run(read_template, oid)

    async def info(self, caller: Caller, oid: int, extended: bool) -> Served:
        if not extended:
            row = await self.db.read(info_row, oid, TemplateRow)
            if row is None:
                raise errors.no_exists(OBJ, oid)
            if not caller.is_admin:
                req = self._auth(caller)
                req.add(Op.USE, row_auth("TEMPLATE", oid, row), check_lock=False)
                req.check()
            return Served([row[0]])
        t = await self.get(oid)
        req = self._auth(caller)
        req.add(Op.USE, template_auth(t), check_lock=False)
        # extended: USE (lock not checked) on every image the DISKs name, too, and the
        # DISKs of the returned copy get the image's and datastore's attributes
        images = await self.db.run(self._extend_disks, t, caller.uid)
        for img in images:
            req.add(Op.USE, image_auth(img), check_lock=False)
        req.check()
        return Served([rpc_bytes(vmtemplate_xml(t))])

    def _extend_disks(self, t: VmTemplate, uid: int) -> list:
        """:func:`extend_disks` on ``t`` with this daemon's configuration and users."""
        return extend_disks(t.template, uid, self.config, self.uid_of)

    async def pool_info(self, caller: Caller, flag: int, start: int, end: int) -> Served:
        if flag < -4:
            raise errors.api("Incorrect filter_flag")
        where = pool_filter(caller, self.identity.acl, flag, TemplateRow, "TEMPLATE")
        order = self.identity.user_option(caller, "API_LIST_ORDER",
                                          self.config.api_list_order).upper()
        bodies = await self.db.read(pool_bodies, where, order != "ASC", start, end, TemplateRow)
        return Served.pool("VMTEMPLATE_POOL", bodies)

    async def _mutate(self, caller: Caller, oid: int, fn, conflict=None) -> None:
        def txn() -> None:
            t = read_template(oid, lock=True)
            fn(t)
            write_template(t, conflict)

        await self.db.run(txn)

    def _manage(self, caller: Caller, t: VmTemplate) -> None:
        req = self._auth(caller)
        req.add(Op.MANAGE, template_auth(t))
        req.check()

    async def update(self, caller: Caller, oid: int, text: str, append: int) -> int:
        def apply(t: VmTemplate) -> None:
            self._manage(caller, t)
            if append not in (0, 1):
                raise errors.api("Wrong update type")
            try:
                new = Template.parse(text, replace_mode=False)
            except TemplateError as exc:
                raise errors.internal(f"Cannot update template. {exc.message}") from None
            if not caller.is_admin:
                attr = restricted_attr(new)
                if attr and (append or _restricted_values(new, attr)
                             != _restricted_values(t.template, attr)):
                    raise errors.internal("Cannot update template. Tried to change "
                                          f"restricted attribute: {attr}")
            if append:
                t.template.merge(new)
            else:
                t.template = new  # NAME in the text stays a plain attribute (QUIRK)

        await self._mutate(caller, oid, apply)
        return oid

    async def chmod(self, caller: Caller, oid: int, values: list[int], recursive: bool) -> int:
        def apply(t: VmTemplate) -> None:
            t.perms = chmod_plan(caller, self._auth(caller), template_auth(t), t.perms,
                                 values, self.config.enable_other_permissions)

        await self._mutate(caller, oid, apply)
        if recursive:
            t = await self.get(oid)
            ids = await self.db.run(template_image_ids, t.template, caller.uid, self.uid_of)
            failed = []
            for iid in ids:
                try:
                    await self.images.chmod(caller, iid, values)
                except errors.OneError:
                    failed.append(str(iid))
            if failed:
                raise errors.action(f"Cannot chmod image: {','.join(failed)}")
        return oid

    async def chown(self, caller: Caller, oid: int, uid: int, gid: int) -> int:
        user = self.identity.user(uid) if uid > -1 else None
        group = self.identity.group(gid) if gid > -1 else None

        def apply(t: VmTemplate) -> None:
            new_user, new_group = chown_plan(self._auth(caller), template_auth(t), t.uid,
                                             t.gid, user, group)
            if new_user is not None:
                other = pools.oid_by_name(TemplateRow, t.name, new_user.id)
                if other is not None:
                    raise errors.internal(f"user [{new_user.id}] already owns {OBJ} "
                                          f"[{other}] with NAME {t.name}")
                t.uid, t.uname = new_user.id, new_user.name
            if new_group is not None:
                t.gid, t.gname = new_group.id, new_group.name

        def conflict(t: VmTemplate, other: int | None) -> errors.OneError:
            return errors.internal(f"user [{t.uid}] already owns {OBJ} [{other}] with NAME "
                                   f"{t.name}")

        await self._mutate(caller, oid, apply, conflict if user else None)
        return oid

    async def rename(self, caller: Caller, oid: int, name: str) -> int:
        def apply(t: VmTemplate) -> None:
            if name == t.name:
                return
            self._manage(caller, t)
            err = name_error(name)
            if err:
                raise errors.action(err)
            other = pools.oid_by_name(TemplateRow, name, t.uid)
            if other is not None and other != t.id:
                raise errors.action(f"{OBJ} cannot be renamed to {name} because it collides "
                                    f"with {OBJ} {other}")
            t.name = name

        def conflict(t: VmTemplate, other: int | None) -> errors.OneError:
            return errors.action(f"{OBJ} cannot be renamed to {t.name} because it collides "
                                 f"with {OBJ} {other}")

        await self._mutate(caller, oid, apply, conflict)
        return oid

    async def lock(self, caller: Caller, oid: int, level: int, test: bool) -> int:
        def apply(t: VmTemplate) -> None:
            req = self._auth(caller)
            req.add(Op.MANAGE, template_auth(t), check_lock=False)
            req.check()
            t.lock = locks.locked(caller, t.lock, level, test)

        await self._mutate(caller, oid, apply)
        return oid

    async def unlock(self, caller: Caller, oid: int) -> int:
        def apply(t: VmTemplate) -> None:
            req = self._auth(caller)
            req.add(Op.MANAGE, template_auth(t), check_lock=False)
            req.check()
            t.lock = locks.unlocked(caller, t.lock)

        await self._mutate(caller, oid, apply)
        return oid

    async def delete(self, caller: Caller, oid: int, recursive: bool) -> int:
        def txn() -> list[int]:
            t = read_template(oid, lock=True)
            self._manage(caller, t)
            ids = (template_image_ids(t.template, caller.uid, self.uid_of)
                   if recursive else [])
            pools.delete(TemplateRow, oid)
            return ids

        ids = await self.db.run(txn)
        failed = []
        for iid in ids:
            try:
                await self.images.delete(caller, iid, False, from_template=True)
            except errors.OneError:
                failed.append(str(iid))
        if failed:
            # oned only logs these (vms.md §4.5): the call succeeds
            log.error("Template {tid} deleted, unable to recursively delete image: {ids}",
                      tid=oid, ids=",".join(failed))
        return oid

    async def clone(self, caller: Caller, oid: int, name: str, recursive: bool) -> int:
        src = await self.get(oid)
        req = self._auth(caller)
        req.add(Op.USE, template_auth(src))
        req.add(Op.CREATE, ObjectAuth("TEMPLATE", -1))
        req.check()
        tmpl = src.template.copy()
        new_id = await self.db.run(self._insert, caller, name, tmpl, self._perms(caller),
                                   lambda detail: errors.allocate(detail, OBJ))
        if not recursive:
            return new_id
        plan = await self.db.run(self._clone_plan, tmpl, caller.uid)
        made: list[int] = []
        try:
            for disk_no, iid in plan:
                made.append(await self.images.clone(caller, iid, f"{name}-disk-{disk_no}", -1))
        except errors.OneError as exc:
            await self.db.run(pools.delete, TemplateRow, new_id)
            for iid in made:
                try:
                    await self.images.delete(caller, iid, False, from_template=True)
                except errors.OneError:
                    log.error("Cannot delete image {iid} of a failed template clone", iid=iid)
            detail = exc.detail or exc.message("one.image.clone", caller.uid, "image").split(
                "] ", 1)[-1]
            raise errors.action(f"Failed to clone images: {detail}") from None
        new_ids = dict(zip((n for n, _ in plan), made, strict=True))

        def rewrite(t: VmTemplate) -> None:
            disks = t.template.remove("DISK")
            for n, disk in enumerate(disks):
                if isinstance(disk, dict) and n in new_ids:
                    disk = {k: v for k, v in disk.items() if k not in CLONE_DROPS}
                    disk["IMAGE_ID"] = str(new_ids[n])
                t.template.add("DISK", disk)

        await self._mutate(caller, new_id, rewrite)
        return new_id

    def _clone_plan(self, tmpl: Template, uid: int) -> list[tuple[int, int]]:
        """(DISK index, image id) of every DISK naming an existing image."""
        plan = []
        for n, disk in enumerate(_disks(tmpl)):
            iid = disk_image_id(disk, uid, self.uid_of, _image_named)
            if iid is not None:
                plan.append((n, iid))
        return plan


def _restricted_values(tmpl: Template, sub: str) -> list[str]:
    out = []
    for attr in tmpl:
        value = attr.value
        if attr.name == sub and isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict) and sub in value:
            out.append(value[sub])
    return out


def extend_disks(tmpl: Template, uid: int, config: DaemonConfig,
                 uid_of: Callable[[str], int | None]) -> list:
    """VirtualMachineDisks::extended_info: ImagePool::disk_attribute on each DISK of
    ``tmpl``, in place, nothing acquired (what acquire would write from the image and
    its datastore); DISK_ID is its position, IMAGE_STATE the image's current state.
    For one.template.info's extended form, and for the copy that instantiate
    authorizes and that allocate and instantiate check the quotas on.  Returns the
    images named."""
    named = []
    disks = tmpl.remove("DISK")
    for n, disk in enumerate(disks):
        disk = dict(disk) if isinstance(disk, dict) else {}
        iid = disk_image_id(disk, uid, uid_of, _image_named)
        img = _image_or_none(iid) if iid is not None else None
        if img is not None:
            named.append(img)
            image_disk_attribute(disk, img, config)
            ds_body = pools.body(DatastoreRow, img.datastore_id)
            if ds_body is not None:
                datastore_disk_attribute(disk, datastore_from(ds_body))
        disk["DISK_ID"] = str(n)
        tmpl.add("DISK", disk)
    return named


def _image_or_none(iid: int):
    body = pools.body(ImageRow, iid)
    return image_from(body) if body is not None else None
