"""What each driver result does to an image (oned's ImageManagerProtocol).

Pure functions over the Image (and, for clones, the source Image) run inside
the transaction that stores the result.  States only move through
``states.next_state``, the same table the API verbs use.
"""

from __future__ import annotations

import time

from oned_images.domain import snapshots as snap
from oned_images.domain.states import ImageState, InvalidTransition, next_state
from oned_images.driver.parse import DriverResult
from oned_images.model.objects import Image


def ctime(now: float | None = None) -> str:
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(now))


def set_error(img: Image, message: str) -> None:
    img.template.set("ERROR", f"{ctime()} : {message}")


def set_state(img: Image, state: ImageState) -> None:
    """oned's Image::set_state: any state but LOCKED also drops the object lock."""
    if state != ImageState.LOCKED:
        img.lock = None
    img.state = int(state)


def _with(detail: str, result: DriverResult) -> str:
    return f"{detail}: {result.error}" if result.error else detail


def copy_done(img: Image, result: DriverResult, action: str) -> None:
    """CP and MKFS replies (api.md §5.2, drivers.md §3)."""
    if img.state not in (ImageState.LOCKED, ImageState.LOCKED_USED,
                         ImageState.LOCKED_USED_PERS):
        return  # e.g. deleted (DELETE) meanwhile: the reply is ignored, as in oned
    if result.ok:
        words = result.first_line.split()
        if action == "cp":
            if len(words) < 2:
                set_state(img, next_state("copy_failure", img.state))
                set_error(img, "CP operation succeeded but image FORMAT was not returned.")
                return
            img.source, img.format = words[0], words[1]
        elif action == "mkfs":
            if not words:
                set_state(img, next_state("copy_failure", img.state))
                set_error(img, "Error creating datablock: MKFS returned no SOURCE")
                return
            img.source = result.first_line
        set_state(img, next_state("copy_success", img.state))
        return
    set_state(img, next_state("copy_failure", img.state))
    if action == "cp":
        set_error(img, _with("Error copying image in the datastore", result))
    else:
        set_error(img, _with("Error creating datablock", result))


def clone_done(img: Image, result: DriverResult) -> None:
    """CLONE reply on the new image; the source is released by clone_release()."""
    if img.state not in (ImageState.LOCKED, ImageState.LOCKED_USED,
                         ImageState.LOCKED_USED_PERS):
        return
    source_id = img.cloning_id
    words = result.first_line.split()
    if result.ok and words:
        img.source = words[0]
        if len(words) > 1:
            img.format = words[1]
        img.cloning_id = -1
        set_state(img, next_state("copy_success", img.state))
        return
    img.cloning_id = -1
    set_state(img, next_state("copy_failure", img.state))
    error = result.error if not result.ok else "CLONE returned no SOURCE"
    set_error(img, f"Error cloning from Image {source_id}: {error}")


def clone_release(source: Image, clone_id: int) -> None:
    source.cloning_ops = max(0, source.cloning_ops - 1)
    source.clones = [c for c in source.clones if c != clone_id]
    try:
        new = next_state("clone_release", source.state, cloning_ops=source.cloning_ops,
                         running_vms=source.running_vms)
    except InvalidTransition:
        return
    if new != source.state:
        set_state(source, new)


RM_ERROR = ("Error removing image from datastore. Retry the operation or manually remove "
            "image source  and run the delete --force operation to completely delete the image")


def rm_done(img: Image, result: DriverResult) -> bool:
    """True when the row must go (success, or FORCE_DELETE); else the image is in ERROR."""
    if result.ok or (img.template.get("FORCE_DELETE") or "").upper() == "YES":
        return True
    set_state(img, next_state("rm_failure", img.state))
    set_error(img, f"{RM_ERROR}: {result.error}" if result.error else RM_ERROR)
    return False


def snapshot_done(img: Image, result: DriverResult, action: str) -> None:
    sid = img.target_snapshot
    if result.ok:
        if action == "snap_delete":
            snap.delete(img.snapshots, sid)
        elif action == "snap_revert":
            size = snap.revert(img.snapshots, sid)
            if size:
                img.size = size
        else:
            img.snapshots = snap.flatten(img.snapshots)
    else:
        if action == "snap_delete":
            set_error(img, f"Error removing snapshot {sid} from image {img.id}: {result.error}")
        elif action == "snap_revert":
            set_error(img, f"Error reverting image {img.id} to snapshot {sid}: {result.error}")
        else:
            set_error(img, f"Error flattening image snapshot: {result.error}")
    img.target_snapshot = -1
    if img.state in (ImageState.LOCKED, ImageState.LOCKED_USED, ImageState.LOCKED_USED_PERS):
        set_state(img, next_state("snapshot_done", img.state))
