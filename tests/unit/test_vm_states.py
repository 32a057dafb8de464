"""The VM life-cycle table (domain/vm_states.py) and the scheduler's requirement
expressions (domain/scheduler.py), without a daemon."""

from __future__ import annotations

import pytest

from oned_images.domain import vm_states as vs
from oned_images.domain.scheduler import RequirementError, requirements_match

V, L = vs.VmState, vs.Lcm


def test_every_transient_state_an_action_or_deploy_enters_is_completed_by_a_step():
    entered = {rule.to[1] for act in vs.ACTIONS.values() for rule in act.rules
               if rule.to is not None and rule.to[0] == V.ACTIVE}
    entered |= set(vs.DEPLOY_FROM.values())
    assert entered <= set(vs.STEPS)
    # and every chain of steps ends in a stable state (no loop, nothing left ACTIVE but
    # RUNNING)
    for lcm in vs.STEPS:
        seen = set()
        state, cur = V.ACTIVE, lcm
        while state == V.ACTIVE and cur in vs.STEPS:
            assert cur not in seen
            seen.add(cur)
            state, cur = vs.STEPS[cur].to
        assert (state, cur) == (V.ACTIVE, L.RUNNING) or state != V.ACTIVE


@pytest.mark.parametrize("action, state, lcm, to", [
    ("terminate", V.ACTIVE, L.RUNNING, (V.ACTIVE, L.SHUTDOWN)),
    ("terminate", V.HOLD, 0, vs.DONE_NOW),
    ("terminate", V.POWEROFF, 0, (V.ACTIVE, L.EPILOG)),
    ("terminate", V.ACTIVE, L.PROLOG_FAILURE, (V.ACTIVE, L.CLEANUP_DELETE)),
    ("terminate-hard", V.ACTIVE, L.SHUTDOWN, (V.ACTIVE, L.SHUTDOWN)),
    ("stop", V.SUSPENDED, 0, (V.ACTIVE, L.EPILOG_STOP)),
    ("undeploy", V.POWEROFF, 0, (V.ACTIVE, L.EPILOG_UNDEPLOY)),
    ("resume", V.UNDEPLOYED, 0, (V.PENDING, 0)),
    ("resume", V.ACTIVE, L.UNKNOWN, (V.ACTIVE, L.BOOT_UNKNOWN)),
    ("release", V.HOLD, 0, (V.PENDING, 0)),
])
def test_rules(action, state, lcm, to):
    assert vs.rule_for(vs.ACTIONS[action], state, lcm).to == to


@pytest.mark.parametrize("action, state, lcm", [
    ("terminate", V.ACTIVE, L.PROLOG), ("terminate", V.ACTIVE, L.SHUTDOWN),
    ("hold", V.ACTIVE, L.RUNNING), ("suspend", V.POWEROFF, 0), ("stop", V.POWEROFF, 0),
    ("poweroff", V.ACTIVE, L.BOOT), ("resume", V.ACTIVE, L.RUNNING),
])
def test_refused(action, state, lcm):
    assert vs.rule_for(vs.ACTIONS[action], state, lcm) is None


def test_state_str():
    assert vs.state_str(V.ACTIVE, L.SHUTDOWN_POWEROFF) == "SHUTDOWN_POWEROFF"
    assert vs.state_str(V.HOLD, 0) == "HOLD"
    assert vs.ACTIONS["terminate"].refusal.format(id=3, state="PROLOG") == (
        "Could not terminate VM 3, wrong state PROLOG.")


HOST = {"NAME": ["h1"], "ID": ["4"], "CLUSTER_ID": ["0"], "TOTALCPU": ["800"]}


@pytest.mark.parametrize("expr, result", [
    ('NAME="h1"', True), ('NAME = "h2"', False), ("ID=4", True), ("ID != 4", False),
    ("(CLUSTER_ID = 0) & !(PIN_POLICY = PINNED)", True),
    ("(CLUSTER_ID = 1 | CLUSTER_ID = 0) & TOTALCPU > 400", True),
    ("TOTALCPU < 400 | NAME = h9", False), ("MISSING != 3", True),
])
def test_requirements(expr, result):
    assert requirements_match(expr, HOST) is result


@pytest.mark.parametrize("expr", ["NAME =", "(ID = 4", "ID = 4 &", "= 4"])
def test_requirements_not_understood(expr):
    with pytest.raises(RequirementError):
        requirements_match(expr, HOST)
