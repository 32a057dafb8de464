"""VM states, LCM states and the one life-cycle table (vms.md §5.1, §5.6, §5.7, §6.4).

Every VM state change goes through :data:`ACTIONS` (what a ``one.vm.action`` or
``one.vm.deploy`` may start, from which states, and the states it passes through with
the dummy drivers) and :data:`STEPS` (what each transient LCM state becomes when the
dummy driver answers).  domain/vms.py only interprets these tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class VmState(IntEnum):
    INIT = 0
    PENDING = 1
    HOLD = 2
    ACTIVE = 3
    STOPPED = 4
    SUSPENDED = 5
    DONE = 6
    FAILED = 7
    POWEROFF = 8
    UNDEPLOYED = 9
    CLONING = 10
    CLONING_FAILURE = 11


class Lcm(IntEnum):
    LCM_INIT = 0
    PROLOG = 1
    BOOT = 2
    RUNNING = 3
    MIGRATE = 4
    SAVE_STOP = 5
    SAVE_SUSPEND = 6
    SAVE_MIGRATE = 7
    PROLOG_MIGRATE = 8
    PROLOG_RESUME = 9
    EPILOG_STOP = 10
    EPILOG = 11
    SHUTDOWN = 12
    CLEANUP_RESUBMIT = 15
    UNKNOWN = 16
    HOTPLUG = 17
    SHUTDOWN_POWEROFF = 18
    BOOT_UNKNOWN = 19
    BOOT_POWEROFF = 20
    BOOT_SUSPENDED = 21
    BOOT_STOPPED = 22
    CLEANUP_DELETE = 23
    HOTPLUG_SNAPSHOT = 24
    HOTPLUG_NIC = 25
    HOTPLUG_SAVEAS = 26
    HOTPLUG_SAVEAS_POWEROFF = 27
    HOTPLUG_SAVEAS_SUSPENDED = 28
    SHUTDOWN_UNDEPLOY = 29
    EPILOG_UNDEPLOY = 30
    PROLOG_UNDEPLOY = 31
    BOOT_UNDEPLOY = 32
    HOTPLUG_PROLOG_POWEROFF = 33
    HOTPLUG_EPILOG_POWEROFF = 34
    BOOT_MIGRATE = 35
    BOOT_FAILURE = 36
    BOOT_MIGRATE_FAILURE = 37
    PROLOG_MIGRATE_FAILURE = 38
    PROLOG_FAILURE = 39
    EPILOG_FAILURE = 40
    EPILOG_STOP_FAILURE = 41
    EPILOG_UNDEPLOY_FAILURE = 42
    PROLOG_MIGRATE_POWEROFF = 43
    PROLOG_MIGRATE_POWEROFF_FAILURE = 44
    PROLOG_MIGRATE_SUSPEND = 45
    PROLOG_MIGRATE_SUSPEND_FAILURE = 46
    BOOT_UNDEPLOY_FAILURE = 47
    BOOT_STOPPED_FAILURE = 48
    PROLOG_RESUME_FAILURE = 49
    PROLOG_UNDEPLOY_FAILURE = 50
    DISK_SNAPSHOT_POWEROFF = 51
    DISK_SNAPSHOT_REVERT_POWEROFF = 52
    DISK_SNAPSHOT_DELETE_POWEROFF = 53
    DISK_SNAPSHOT_SUSPENDED = 54
    DISK_SNAPSHOT_REVERT_SUSPENDED = 55
    DISK_SNAPSHOT_DELETE_SUSPENDED = 56
    DISK_SNAPSHOT = 57
    DISK_SNAPSHOT_DELETE = 59
    PROLOG_MIGRATE_UNKNOWN = 60
    PROLOG_MIGRATE_UNKNOWN_FAILURE = 61
    DISK_RESIZE = 62
    DISK_RESIZE_POWEROFF = 63
    DISK_RESIZE_UNDEPLOYED = 64
    HOTPLUG_NIC_POWEROFF = 65
    HOTPLUG_RESIZE = 66
    HOTPLUG_SAVEAS_UNDEPLOYED = 67
    HOTPLUG_SAVEAS_STOPPED = 68
    BACKUP = 69
    BACKUP_POWEROFF = 70


V, L = VmState, Lcm
#: the ACTIVE LCM states whose terminate is a cleanup (VMM/TM failures; vms.md §5.7)
FAILURES = frozenset({
    L.BOOT_FAILURE, L.BOOT_MIGRATE_FAILURE, L.PROLOG_MIGRATE_FAILURE, L.PROLOG_FAILURE,
    L.EPILOG_FAILURE, L.EPILOG_STOP_FAILURE, L.EPILOG_UNDEPLOY_FAILURE,
    L.PROLOG_MIGRATE_POWEROFF_FAILURE, L.PROLOG_MIGRATE_SUSPEND_FAILURE,
    L.BOOT_UNDEPLOY_FAILURE, L.BOOT_STOPPED_FAILURE, L.PROLOG_RESUME_FAILURE,
    L.PROLOG_UNDEPLOY_FAILURE, L.PROLOG_MIGRATE_UNKNOWN_FAILURE,
})


def state_str(state: int, lcm: int) -> str:
    """VirtualMachine::state_str: the LCM name when ACTIVE, else the STATE name."""
    if state == V.ACTIVE:
        return Lcm(lcm).name
    return VmState(state).name


#: a (STATE, LCM_STATE) pair; LCM None matches any LCM state of that STATE
Where = tuple[int, int | None]


@dataclass(frozen=True)
class Rule:
    """From ``sources``, the action moves the VM to ``to`` at once (the transient state
    the driver then completes through :data:`STEPS`).  ``history`` is the ACTION code
    written into the current HISTORY record (0: none)."""

    sources: tuple[Where, ...]
    #: None: the state does not change (reboot, resched with the dummy driver)
    to: tuple[int, int] | None
    history: int = 0


@dataclass(frozen=True)
class Action:
    rules: tuple[Rule, ...]
    #: the refusal's text; ``{id}`` and ``{state}`` are filled in
    refusal: str = "This action is not available for state {state}"


A = ACTIVE = V.ACTIVE
_RUNNING_UNKNOWN = ((A, L.RUNNING), (A, L.UNKNOWN))
_INIT_STATES = ((V.PENDING, None), (V.HOLD, None), (V.CLONING, None),
                (V.CLONING_FAILURE, None))
_FAILED = tuple((A, f) for f in sorted(FAILURES))
#: the pseudo target of terminate from PENDING/HOLD/CLONING: DONE at once
DONE_NOW = (V.DONE, L.LCM_INIT)


def _terminate(code: int, extra: tuple[Where, ...] = ()) -> Action:
    return Action((
        Rule(_RUNNING_UNKNOWN + extra, (A, L.SHUTDOWN), code),
        Rule(_INIT_STATES, DONE_NOW),
        Rule(((V.POWEROFF, None), (V.SUSPENDED, None), (V.STOPPED, None),
              (V.UNDEPLOYED, None)), (A, L.EPILOG), code),
        Rule(_FAILED, (A, L.CLEANUP_DELETE), 13),
        Rule(((V.DONE, None),), None),
    ), "Could not terminate VM {id}, wrong state {state}.")


def _undeploy(code: int, extra: tuple[Where, ...] = ()) -> Action:
    return Action((
        Rule(_RUNNING_UNKNOWN + extra, (A, L.SHUTDOWN_UNDEPLOY), code),
        Rule(((V.POWEROFF, None),), (A, L.EPILOG_UNDEPLOY), code),
    ))


def _poweroff(code: int, extra: tuple[Where, ...] = ()) -> Action:
    return Action((Rule(_RUNNING_UNKNOWN + extra, (A, L.SHUTDOWN_POWEROFF), code),))


#: one.vm.action strings (vms.md §5.7) -> what they do
ACTIONS: dict[str, Action] = {
    "terminate": _terminate(27),
    "terminate-hard": _terminate(28, ((A, L.SHUTDOWN),)),
    "hold": Action((Rule(((V.PENDING, None),), (V.HOLD, L.LCM_INIT)),)),
    "release": Action((Rule(((V.HOLD, None),), (V.PENDING, L.LCM_INIT)),)),
    "poweroff": _poweroff(19),
    "poweroff-hard": _poweroff(20, ((A, L.SHUTDOWN_POWEROFF),)),
    "suspend": Action((Rule(((A, L.RUNNING),), (A, L.SAVE_SUSPEND), 10),)),
    "stop": Action((
        Rule(((A, L.RUNNING),), (A, L.SAVE_STOP), 9),
        Rule(((V.SUSPENDED, None),), (A, L.EPILOG_STOP), 9),
    )),
    "undeploy": _undeploy(5),
    "undeploy-hard": _undeploy(6, ((A, L.SHUTDOWN_UNDEPLOY),)),
    "resume": Action((
        Rule(((V.STOPPED, None), (V.UNDEPLOYED, None)), (V.PENDING, L.LCM_INIT)),
        Rule(((V.SUSPENDED, None),), (A, L.BOOT_SUSPENDED)),
        Rule(((V.POWEROFF, None),), (A, L.BOOT_POWEROFF)),
        Rule(((A, L.UNKNOWN),), (A, L.BOOT_UNKNOWN)),
    )),
    "reboot": Action((Rule(_RUNNING_UNKNOWN, None),)),
    "reboot-hard": Action((Rule(_RUNNING_UNKNOWN, None),)),
    "resched": Action((Rule(((A, L.RUNNING), (A, L.UNKNOWN), (V.POWEROFF, None)), None),)),
    "unresched": Action((Rule(((A, L.RUNNING), (A, L.UNKNOWN), (V.POWEROFF, None)), None),)),
}
#: deploy: from these states (vms.md §5.6 step 6) to this first LCM state
DEPLOY_FROM = {V.PENDING: L.PROLOG, V.HOLD: L.PROLOG, V.STOPPED: L.PROLOG_RESUME,
               V.UNDEPLOYED: L.PROLOG_UNDEPLOY}


def rule_for(action: Action, state: int, lcm: int) -> Rule | None:
    for rule in action.rules:
        for s, lc in rule.sources:
            if s == state and (lc is None or lc == lcm):
                return rule
    return None


@dataclass(frozen=True)
class Step:
    """What a transient LCM state becomes when the dummy driver (VMM or TM) answers:
    the next (STATE, LCM_STATE) and the host/history/image effects of reaching it."""

    to: tuple[int, int]
    #: the driver operation answered (for logs)
    op: str
    #: the VM leaves its host's capacity on reaching ``to``
    leaves_host: bool = False
    #: the VM is DONE on reaching ``to`` (images released)
    done: bool = False


STEPS: dict[int, Step] = {
    L.PROLOG: Step((A, L.BOOT), "prolog"),
    L.PROLOG_RESUME: Step((A, L.BOOT_STOPPED), "prolog"),
    L.PROLOG_UNDEPLOY: Step((A, L.BOOT_UNDEPLOY), "prolog"),
    L.BOOT: Step((A, L.RUNNING), "deploy"),
    L.BOOT_STOPPED: Step((A, L.RUNNING), "deploy"),
    L.BOOT_UNDEPLOY: Step((A, L.RUNNING), "deploy"),
    L.BOOT_SUSPENDED: Step((A, L.RUNNING), "restore"),
    L.BOOT_POWEROFF: Step((A, L.RUNNING), "deploy"),
    L.BOOT_UNKNOWN: Step((A, L.RUNNING), "deploy"),
    L.SHUTDOWN: Step((A, L.EPILOG), "shutdown"),
    L.EPILOG: Step((V.DONE, L.LCM_INIT), "epilog", leaves_host=True, done=True),
    L.CLEANUP_DELETE: Step((V.DONE, L.LCM_INIT), "delete", leaves_host=True, done=True),
    # delete-recreate: the files are gone, the VM waits to be placed again (its images
    # stay acquired); DispatchManager::trigger_resubmit
    L.CLEANUP_RESUBMIT: Step((V.PENDING, L.LCM_INIT), "delete", leaves_host=True),
    L.SHUTDOWN_POWEROFF: Step((V.POWEROFF, L.LCM_INIT), "shutdown"),
    L.SAVE_SUSPEND: Step((V.SUSPENDED, L.LCM_INIT), "save"),
    L.SAVE_STOP: Step((A, L.EPILOG_STOP), "save"),
    L.EPILOG_STOP: Step((V.STOPPED, L.LCM_INIT), "epilog_stop", leaves_host=True),
    L.SHUTDOWN_UNDEPLOY: Step((A, L.EPILOG_UNDEPLOY), "shutdown"),
    L.EPILOG_UNDEPLOY: Step((V.UNDEPLOYED, L.LCM_INIT), "epilog_undeploy", leaves_host=True),
}

#: where a failed TM transfer sends the VM (vms.md §7.4); a cleanup (CLEANUP_DELETE)
#: ends DONE whatever its transfer answers
TM_FAILURE: dict[int, int] = {
    L.PROLOG: L.PROLOG_FAILURE,
    L.PROLOG_RESUME: L.PROLOG_RESUME_FAILURE,
    L.PROLOG_UNDEPLOY: L.PROLOG_UNDEPLOY_FAILURE,
    L.EPILOG: L.EPILOG_FAILURE,
    L.EPILOG_STOP: L.EPILOG_STOP_FAILURE,
    L.EPILOG_UNDEPLOY: L.EPILOG_UNDEPLOY_FAILURE,
}
#: a TM *_FAILURE state -> the operation it failed (recover retry/success)
FAILURE_OF: dict[int, int] = {failure: lcm for lcm, failure in TM_FAILURE.items()}

#: HISTORY ACTION codes of the recover operations that end a VM's run (VMActions)
DELETE_ACTION, DELETE_RECREATE_ACTION = 13, 14
#: LifeCycleManager::clean_up_vm: the LCM states whose cleanup closes the prolog
#: (PETIME) or the epilog (EETIME) of the current record; of the others, those in
#: :data:`CLEANUP_KEEPS_TIMES` close nothing and the rest close the running time
#: (RETIME)
CLEANUP_PROLOG = frozenset({
    L.PROLOG, L.PROLOG_RESUME, L.PROLOG_RESUME_FAILURE, L.PROLOG_UNDEPLOY,
    L.PROLOG_UNDEPLOY_FAILURE, L.PROLOG_FAILURE, L.PROLOG_MIGRATE, L.PROLOG_MIGRATE_FAILURE,
    L.PROLOG_MIGRATE_POWEROFF, L.PROLOG_MIGRATE_POWEROFF_FAILURE, L.PROLOG_MIGRATE_SUSPEND,
    L.PROLOG_MIGRATE_SUSPEND_FAILURE, L.PROLOG_MIGRATE_UNKNOWN,
    L.PROLOG_MIGRATE_UNKNOWN_FAILURE,
})
CLEANUP_EPILOG = frozenset({
    L.EPILOG_STOP, L.EPILOG_UNDEPLOY, L.EPILOG, L.EPILOG_FAILURE, L.EPILOG_STOP_FAILURE,
    L.EPILOG_UNDEPLOY_FAILURE,
})
CLEANUP_KEEPS_TIMES = frozenset({
    L.LCM_INIT, L.CLEANUP_RESUBMIT, L.CLEANUP_DELETE, L.HOTPLUG_SAVEAS_UNDEPLOYED,
    L.HOTPLUG_SAVEAS_STOPPED, L.HOTPLUG_PROLOG_POWEROFF, L.HOTPLUG_EPILOG_POWEROFF,
    L.DISK_SNAPSHOT_POWEROFF, L.DISK_SNAPSHOT_REVERT_POWEROFF, L.DISK_SNAPSHOT_DELETE_POWEROFF,
    L.DISK_SNAPSHOT_SUSPENDED, L.DISK_SNAPSHOT_REVERT_SUSPENDED,
    L.DISK_SNAPSHOT_DELETE_SUSPENDED, L.DISK_SNAPSHOT_DELETE, L.BACKUP_POWEROFF,
    L.DISK_RESIZE_POWEROFF, L.DISK_RESIZE_UNDEPLOYED,
})
