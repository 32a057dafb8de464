"""Image states, types and the one transition table (api.md §5).

Both sides consult :func:`next_state`: the API verbs (enable, clone, delete,
snapshots) and the driver replies (CP/MKFS/CLONE/RM/SNAP_* results), so a
state change that the table does not list cannot happen anywhere.
"""

from __future__ import annotations

from enum import IntEnum


class ImageState(IntEnum):
    INIT = 0
    READY = 1
    USED = 2
    DISABLED = 3
    LOCKED = 4
    ERROR = 5
    CLONE = 6
    DELETE = 7
    USED_PERS = 8
    LOCKED_USED = 9
    LOCKED_USED_PERS = 10


class ImageType(IntEnum):
    OS = 0
    CDROM = 1
    DATABLOCK = 2
    KERNEL = 3
    RAMDISK = 4
    CONTEXT = 5
    BACKUP = 6


class DsType(IntEnum):
    IMAGE_DS = 0
    SYSTEM_DS = 1
    FILE_DS = 2
    BACKUP_DS = 3


S = ImageState
FILE_TYPES = (ImageType.KERNEL, ImageType.RAMDISK, ImageType.CONTEXT)
DISK_TYPES = (ImageType.OS, ImageType.CDROM, ImageType.DATABLOCK)


def state_to_str(state: int) -> str:
    """oned's Image::state_to_str: USED_PERS prints USED, LOCKED_USED_PERS LOCKED_USED."""
    s = ImageState(state)
    if s == S.USED_PERS:
        return "USED"
    if s == S.LOCKED_USED_PERS:
        return "LOCKED_USED"
    return s.name


class InvalidTransition(Exception):
    def __init__(self, event: str, state: int) -> None:
        super().__init__(f"{event} not allowed in state {state_to_str(state)}")
        self.event = event
        self.state = state


def _in_use(running_vms: int, persistent: int) -> ImageState:
    if running_vms > 0:
        return S.USED_PERS if persistent else S.USED
    return S.READY


def _released(ctx: dict, free: ImageState, held: ImageState, persistent: bool) -> ImageState:
    """ImageManager::release_image: the last VM gone (and, for a non-persistent image,
    no clone running) frees the image; a persistent one that a failed VM held is ERROR."""
    if persistent and ctx.get("failed"):
        return S.ERROR
    if ctx["running_vms"] > 0 or (not persistent and ctx.get("cloning_ops", 0) > 0):
        return held
    return free


# event -> {from state -> to state | "same" | callable(ctx) -> state}
TRANSITIONS: dict[str, dict[ImageState, object]] = {
    "register_source": {S.INIT: S.READY},
    "register_copy": {S.INIT: S.LOCKED},
    "copy_success": {S.LOCKED: S.READY, S.LOCKED_USED: S.USED, S.LOCKED_USED_PERS: S.USED_PERS},
    "copy_failure": {S.LOCKED: S.ERROR, S.LOCKED_USED: S.ERROR, S.LOCKED_USED_PERS: S.ERROR},
    "clone_source": {
        S.READY: lambda ctx: S.CLONE if ctx["persistent"] else S.USED,
        S.USED: "same",
        S.CLONE: "same",
    },
    "clone_release": {
        S.CLONE: lambda ctx: S.READY if ctx["cloning_ops"] == 0 and ctx["running_vms"] == 0
        else S.CLONE,
        S.USED: lambda ctx: S.READY if ctx["cloning_ops"] == 0 and ctx["running_vms"] == 0
        else S.USED,
    },
    "enable": {
        S.DISABLED: S.READY,
        S.ERROR: lambda ctx: _in_use(ctx["running_vms"], ctx["persistent"]),
        S.READY: "same",
    },
    "disable": {S.READY: S.DISABLED, S.ERROR: S.DISABLED, S.DISABLED: "same"},
    "snapshot_start": {S.READY: S.LOCKED},
    # oned's Image::set_state_unlock: a VM may have taken the image meanwhile
    "snapshot_done": {S.LOCKED: S.READY, S.LOCKED_USED: S.USED,
                      S.LOCKED_USED_PERS: S.USED_PERS},
    "delete": {
        S.INIT: S.DELETE, S.READY: S.DELETE, S.DISABLED: S.DELETE, S.ERROR: S.DELETE,
        S.DELETE: S.DELETE, S.LOCKED: S.DELETE,
    },
    "rm_failure": {S.DELETE: S.ERROR},
    # A VM takes the image (vms.md §1.2); the refusals (type, persistent in use, locked
    # on attach, other states) are decided by domain/vm_disks.py before this is consulted.
    "acquire": {
        S.READY: lambda ctx: S.USED_PERS if ctx["persistent"] else S.USED,
        S.USED: "same",
        S.USED_PERS: "same",
        S.LOCKED: lambda ctx: S.LOCKED_USED_PERS if ctx["persistent"] else S.LOCKED_USED,
        S.LOCKED_USED: "same",
        S.LOCKED_USED_PERS: "same",
    },
    # A VM lets it go (vms.md §1.4), ``running_vms`` counted after the VM left VMS;
    # ``failed`` only matters to persistent images (USED ignores it).
    "release": {
        S.USED_PERS: lambda ctx: _released(ctx, S.READY, S.USED_PERS, True),
        S.LOCKED_USED_PERS: lambda ctx: _released(ctx, S.LOCKED, S.LOCKED_USED_PERS, True),
        S.USED: lambda ctx: _released(ctx, S.READY, S.USED, False),
        S.LOCKED_USED: lambda ctx: _released(ctx, S.LOCKED, S.LOCKED_USED, False),
    },
}


def next_state(event: str, state: int, **ctx: int) -> ImageState:
    """The state ``event`` leads to from ``state``; InvalidTransition if none."""
    table = TRANSITIONS[event]
    try:
        target = table[ImageState(state)]
    except (KeyError, ValueError):
        raise InvalidTransition(event, state) from None
    if target == "same":
        return ImageState(state)
    if callable(target):
        return target(ctx)
    return target  # type: ignore[return-value]

