"""What a DISK gets from its image and the image's datastore (vms.md §2.4, §2.5):
oned's Image::disk_attribute and Datastore::disk_attribute, as pure functions on a DISK
vector.  one.template.info (extended) uses them today; VM allocate and attach use the
same rules once VMs exist."""

from __future__ import annotations

from oned_images.config import DaemonConfig
from oned_images.domain.datastores import DISK_TYPES
from oned_images.domain.snapshots import snapshots
from oned_images.domain.states import ImageState, ImageType
from oned_images.model.objects import Datastore, Image
from oned_images.template import Vector

#: oned.conf's shipped INHERIT_IMAGE_ATTR and INHERIT_DATASTORE_ATTR.
INHERIT_IMAGE_ATTR = ("ISCSI_USER", "ISCSI_USAGE", "ISCSI_HOST", "ISCSI_IQN", "LUKS_SECRET",
                      "DISK_TYPE", "SERIAL")
INHERIT_DATASTORE_ATTR = ("CEPH_HOST", "CEPH_SECRET", "CEPH_KEY", "CEPH_USER", "CEPH_CONF",
                          "CEPH_TRASH", "POOL_NAME", "ISCSI_USER", "ISCSI_USAGE", "ISCSI_HOST",
                          "GLUSTER_HOST", "GLUSTER_VOLUME", "DISK_TYPE", "ALLOW_ORPHANS",
                          "QCOW2_STANDALONE", "SPARSE", "LVM_THIN_ENABLE",
                          "PERSISTENT_SNAPSHOTS")
LOCKED_STATES = (ImageState.LOCKED, ImageState.LOCKED_USED, ImageState.LOCKED_USED_PERS)
#: Image::disk_type_to_str for a CDROM on each datastore disk type
CDROM_TYPES = {3: "RBD_CDROM", 5: "GLUSTER_CDROM", 7: "SHEEPDOG_CDROM"}


def _yes(flag: bool) -> str:
    return "YES" if flag else "NO"


def _bool(value: str | None) -> bool | None:
    """oned's Attribute::vector_value(bool): YES/NO (any case), else not a bool."""
    if value is None:
        return None
    upper = value.strip().upper()
    return True if upper == "YES" else False if upper == "NO" else None


def image_disk_attribute(disk: Vector, img: Image, config: DaemonConfig,
                         image_state: int | None = None) -> None:
    """Image::disk_attribute: the image's part of a DISK (``image_state``: the state to
    show in IMAGE_STATE, the image's own when None)."""
    itype = ImageType(img.type)
    cdrom = itype == ImageType.CDROM
    if not disk.get("DEV_PREFIX"):
        disk["DEV_PREFIX"] = (img.template.get("DEV_PREFIX")
                              or (config.default_cdrom_device_prefix if cdrom
                                  else config.default_device_prefix))
    disk["IMAGE"] = img.name
    disk["IMAGE_ID"] = str(img.id)
    disk["SOURCE"] = img.source
    disk["ORIGINAL_SIZE"] = str(img.size)
    if "SIZE" not in disk:
        disk["SIZE"] = str(img.size)
    total = sum(int(s.get("SIZE", "0") or 0) for s in snapshots(img.snapshots))
    disk["DISK_SNAPSHOT_TOTAL_SIZE"] = str(total)
    fmt = img.format.lower()
    if fmt:
        disk["DRIVER"] = fmt
        disk["FORMAT"] = fmt
    else:
        disk.pop("DRIVER", None)
        disk.pop("FORMAT", None)
    state = img.state if image_state is None else image_state
    disk["IMAGE_STATE"] = str(state)
    persistent_type = (img.template.get("PERSISTENT_TYPE") or "").upper()
    if cdrom or persistent_type == "IMMUTABLE":
        disk["SAVE"], disk["CLONE"], disk["READONLY"] = "NO", "NO", "YES"
    else:
        readonly = _bool(disk.get("READONLY"))
        if readonly is None:
            readonly = _bool(img.template.get("READONLY")) or False
        disk["READONLY"] = _yes(readonly)
        if img.persistent:
            disk["PERSISTENT"], disk["CLONE"], disk["SAVE"] = "YES", "NO", "YES"
            if persistent_type == "SHAREABLE" and img.format == "raw":
                disk["SHAREABLE"] = "YES"
        else:
            disk["CLONE"], disk["SAVE"] = "YES", "NO"
    if state in LOCKED_STATES:
        disk["CLONING"] = "YES"
    else:
        disk.pop("CLONING", None)
    if cdrom:
        disk["TYPE"] = CDROM_TYPES.get(img.disk_type, "CDROM")
    elif itype in (ImageType.OS, ImageType.DATABLOCK):
        disk["TYPE"] = next((k for k, v in DISK_TYPES.items() if v == img.disk_type), "FILE")
    if not disk.get("TARGET") and img.template.get("TARGET"):
        disk["TARGET"] = img.template.get("TARGET") or ""
    for attr in INHERIT_IMAGE_ATTR:
        value = img.template.get(attr)
        if value and not disk.get(attr):
            disk[attr] = value


def datastore_disk_attribute(disk: Vector, ds: Datastore) -> None:
    """Datastore::disk_attribute: the datastore's part of a DISK."""
    disk["DATASTORE"] = ds.name
    disk["DATASTORE_ID"] = str(ds.id)
    disk["TM_MAD"] = ds.tm_mad
    disk["CLUSTER_ID"] = ",".join(str(c) for c in ds.clusters)
    mode = (disk.get("TM_MAD_SYSTEM") or "").upper()
    t = ds.template
    for attr in ("CLONE_TARGET", "LN_TARGET"):
        value = (t.get(f"{attr}_{mode}") if mode else None) or t.get(attr)
        if value and not disk.get(attr):
            disk[attr] = value
    for attr in INHERIT_DATASTORE_ATTR:
        value = t.get(attr)
        if value and attr not in disk:
            disk[attr] = value
    special = t.get(f"DISK_TYPE_{mode}") if mode else None
    if special:
        kind = disk.get("TYPE", "")
        disk["TYPE"] = (kind if kind == "CDROM" else f"{special}_CDROM") if kind.endswith(
            "CDROM") else special
        disk["DISK_TYPE"] = special
