"""Which right a VM operation needs: oned's VM_ADMIN/MANAGE/USE_OPERATIONS.

An operator moves VM operations between the ADMIN, MANAGE and USE rights in the
configuration, and per user or per group in their templates (say, let a group's users
migrate their own VMs, or keep them from terminating them).  oned asks the caller's
user template first, then the template of the group the call acts as, then oned.conf;
an operation named in none of them needs MANAGE, the right every VM call defaults to
(vms.md §5.2).  Names and the words that group them are oned 7.0's VMActions.
"""

from __future__ import annotations

from dataclasses import dataclass

from oned_images.domain.permissions import Op
from oned_images.template import Template

#: the words of a VM_*_OPERATIONS list and the operations each one stands for
WORDS: dict[str, tuple[str, ...]] = {
    "migrate": ("migrate", "live-migrate", "poweroff-migrate", "poweroff-hard-migrate"),
    "delete": ("delete", "delete-recreate"),
    "recover": ("recover",),
    "retry": ("retry",),
    "deploy": ("deploy",),
    "resched": ("resched", "unresched"),
    "undeploy": ("undeploy", "undeploy-hard"),
    "hold": ("hold",),
    "release": ("release",),
    "stop": ("stop",),
    "suspend": ("suspend",),
    "resume": ("resume",),
    "reboot": ("reboot", "reboot-hard"),
    "poweroff": ("poweroff", "poweroff-hard"),
    "disk-attach": ("disk-attach", "disk-detach"),
    "nic-attach": ("nic-attach", "nic-detach", "alias-attach", "alias-detach", "nic-update"),
    "disk-snapshot": ("disk-snapshot-create", "disk-snapshot-delete", "disk-snapshot-revert",
                      "disk-snapshot-rename"),
    "terminate": ("terminate", "terminate-hard"),
    "disk-resize": ("disk-resize",),
    "snapshot": ("snapshot-create", "snapshot-delete", "snapshot-revert"),
    "updateconf": ("updateconf",),
    "rename": ("rename",),
    "resize": ("resize",),
    "update": ("update",),
    "disk-saveas": ("disk-saveas",),
    "backup": ("backup", "backup-cancel"),
    "sched-action": ("sched-add", "sched-update", "sched-delete"),
    "sg-attach": ("sg-attach", "sg-detach"),
    "pci-attach": ("pci-attach", "pci-detach"),
    "restore": ("restore",),
}

#: the strings one.vm.action knows as operations (VMActions::action_from_str), each
#: with the operation it names; one it does not know is checked for MANAGE and then
#: refused as not supported.  oned spells a disk snapshot's delete this way here.
ACTION_STRINGS: dict[str, str] = {
    name: name for names in WORDS.values() for name in names if name != "disk-snapshot-delete"
} | {"disk-snapshot-snap-delete": "disk-snapshot-delete"}

#: oned.conf's lists as OpenNebula 7.0 ships them
DEFAULT_ADMIN = "migrate, delete, recover, retry, deploy, resched, backup, restore"
DEFAULT_MANAGE = ("undeploy, hold, release, stop, suspend, resume, reboot, poweroff, "
                  "disk-attach, nic-attach, disk-snapshot, terminate, disk-resize, snapshot, "
                  "updateconf, rename, resize, update, disk-saveas, sched-action, sg-attach, "
                  "pci-attach")
DEFAULT_USE = ""

#: the template attributes; an operation named in two of them needs the higher right
ATTRIBUTES = ("VM_ADMIN_OPERATIONS", "VM_MANAGE_OPERATIONS", "VM_USE_OPERATIONS")


class UnknownOperation(ValueError):
    """A list names a word oned does not know; its text is oned's."""

    def __init__(self, word: str) -> None:
        super().__init__(f"Unknown vm operation: {word}")


def operations(text: str, strict: bool = True) -> frozenset[str]:
    """The operations a VM_*_OPERATIONS list names (comma separated, any case).
    strict=False skips unknown words: a template stored before its check was made."""
    found: set[str] = set()
    for word in text.split(","):
        word = word.strip().lower()
        if not word:
            continue
        names = WORDS.get(word)
        if names is None:
            if strict:
                raise UnknownOperation(word)
            continue
        found.update(names)
    return frozenset(found)


@dataclass(frozen=True)
class OpClasses:
    """One source's three lists (configuration, a user's or a group's template)."""

    admin: frozenset[str] = frozenset()
    manage: frozenset[str] = frozenset()
    use: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, admin: str, manage: str, use: str, strict: bool = True) -> OpClasses:
        return cls(operations(admin, strict), operations(manage, strict),
                   operations(use, strict))

    @classmethod
    def of_template(cls, tmpl: Template | None, strict: bool = False) -> OpClasses | None:
        """A template's lists; None when it names none (the next source decides)."""
        if tmpl is None:
            return None
        values = [tmpl.get(name) for name in ATTRIBUTES]
        if all(not isinstance(v, str) or not v.strip() for v in values):
            return None
        admin, manage, use = (v if isinstance(v, str) else "" for v in values)
        return cls.parse(admin, manage, use, strict)

    def right(self, operation: str) -> Op | None:
        if operation in self.admin:
            return Op.ADMIN
        if operation in self.manage:
            return Op.MANAGE
        if operation in self.use:
            return Op.USE
        return None


DEFAULTS = OpClasses.parse(DEFAULT_ADMIN, DEFAULT_MANAGE, DEFAULT_USE)


def check_template(tmpl: Template) -> None:
    """Refuse a user or group template whose lists name an unknown word (oned's
    post_update_template); raises :class:`UnknownOperation`."""
    OpClasses.of_template(tmpl, strict=True)


def right_for(operation: str, *sources: OpClasses | None) -> Op:
    """The right ``operation`` needs: the first source that names it, else MANAGE."""
    for source in sources:
        if source is not None:
            right = source.right(operation)
            if right is not None:
                return right
    return Op.MANAGE
