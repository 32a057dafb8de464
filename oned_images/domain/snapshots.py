"""The SNAPSHOTS list of an image and oned's rules on it (api.md §4.3, §7.4).

The list is kept as a Template (ALLOW_ORPHANS, CURRENT_BASE, NEXT_SNAPSHOT
and one SNAPSHOT vector per snapshot) because that is exactly how it is
serialised: sorted names, CDATA values.
"""

from __future__ import annotations

from oned_images.template import Template


def new_list() -> Template:
    t = Template()
    t.add("ALLOW_ORPHANS", "NO")
    t.add("CURRENT_BASE", "-1")
    t.add("NEXT_SNAPSHOT", "0")
    return t


def snapshots(t: Template) -> list[dict[str, str]]:
    return [v for v in t.get_all("SNAPSHOT") if isinstance(v, dict)]


def count(t: Template) -> int:
    return len(snapshots(t))


def find(t: Template, sid: int) -> dict[str, str] | None:
    for s in snapshots(t):
        if s.get("ID") == str(sid):
            return s
    return None


def mode(t: Template) -> str:
    return (t.get("ALLOW_ORPHANS") or "NO").upper()


def children(snap: dict[str, str]) -> list[str]:
    return [c for c in snap.get("CHILDREN", "").split(",") if c.strip()]


def delete_error(t: Template, sid: int) -> str | None:
    snap = find(t, sid)
    if snap is None:
        return "Snapshot does not exist"
    if mode(t) in ("NO", "MIXED"):
        if snap.get("ACTIVE", "").upper() == "YES":
            return "Cannot delete the active snapshot"
        if children(snap):
            return "Cannot delete snapshot with children"
    return None


def _rebuild(t: Template, snaps: list[dict[str, str]]) -> None:
    t.remove("SNAPSHOT")
    for s in snaps:
        t.add("SNAPSHOT", s)


def delete(t: Template, sid: int) -> int:
    """Remove snapshot ``sid``, re-linking parent and children; returns its SIZE."""
    snaps = snapshots(t)
    target = find(t, sid)
    if target is None:
        return 0
    parent = target.get("PARENT", "-1")
    kids = children(target)
    out = []
    for s in snaps:
        if s is target:
            continue
        s = dict(s)
        if s.get("ID") == parent:
            mine = [c for c in children(s) if c != str(sid)] + kids
            if mine:
                s["CHILDREN"] = ",".join(mine)
            else:
                s.pop("CHILDREN", None)
            if target.get("ACTIVE", "").upper() == "YES":
                s["ACTIVE"] = "YES"
        if s.get("ID") in kids:
            s["PARENT"] = parent
        out.append(s)
    _rebuild(t, out)
    try:
        return int(target.get("SIZE", "0") or 0)
    except ValueError:
        return 0


def revert(t: Template, sid: int) -> int:
    """Make ``sid`` active (LINEAR drops younger ones); returns the new image SIZE."""
    snaps = snapshots(t)
    out = []
    size = 0
    for s in snaps:
        s = dict(s)
        if mode(t) == "LINEAR" and int(s.get("ID", "0")) > sid:
            continue
        if s.get("ID") == str(sid):
            s["ACTIVE"] = "YES"
            try:
                size = int(s.get("SIZE", "0") or 0)
            except ValueError:
                size = 0
        else:
            s.pop("ACTIVE", None)
        out.append(s)
    _rebuild(t, out)
    if mode(t) == "MIXED":
        t.set("CURRENT_BASE", str(sid))
    return size


def flatten(t: Template) -> Template:
    """After a flatten the whole SNAPSHOTS element is empty (header included)."""
    return Template()
