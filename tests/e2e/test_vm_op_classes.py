"""The right each VM operation needs (VM_ADMIN/MANAGE/USE_OPERATIONS): the caller's user
template first, then its group's, then the configuration (oned's defaults here), and
one.user.update / one.group.update refuse a list with a word oned does not know.  The
users and the group are this module's own, so no other module sees their templates."""

from __future__ import annotations

import pytest

from tests.support.seed import fails, field, group, num, ok, parse, template_dict, user

pytestmark = [pytest.mark.timeout(120)]

INTERNAL, NO_EXISTS, AUTHZ, ACTION, API = 8192, 1024, 512, 2048, 4096
HOLD_VM = 'CPU="0.1"\nMEMORY="64"'


@pytest.fixture()
def people(daemon):
    """(gid, (owner uid, session), (member uid, session)), and a VM on hold of the owner
    that the group may USE only."""
    gid = group(daemon)
    owner = user(daemon, groups=[gid])
    member = user(daemon, groups=[gid])
    oid = ok(daemon, "one.vm.allocate", HOLD_VM, True)  # a new group may not CREATE VMs
    ok(daemon, "one.vm.chown", oid, owner[0], gid)
    ok(daemon, "one.vm.chmod", oid, 1, 1, 0, 1, 0, 0, 0, 0, 0)
    return gid, owner, member, oid


def refused(daemon, method, oid, right, who, *args):
    uid, session = who
    assert fails(daemon, method, *args, session=session) == (
        f"[{method}] User [{uid}] : Not authorized to perform {right} VM [{oid}].", AUTHZ, -1)


def test_the_user_template_then_the_group_then_the_configuration(daemon, people):
    gid, owner, member, oid = people
    # configuration: rename needs MANAGE, which the group does not have
    refused(daemon, "one.vm.rename", oid, "MANAGE", member, oid, "by-member")
    # the group's template makes rename a USE operation for its users
    assert ok(daemon, "one.group.update", gid, 'VM_USE_OPERATIONS="rename"', 1) == gid
    assert ok(daemon, "one.vm.rename", oid, "by-member", session=member[1]) == oid
    assert field(ok(daemon, "one.vm.info", oid), "NAME") == "by-member"
    # the member's own template is asked first
    ok(daemon, "one.user.update", member[0], 'VM_MANAGE_OPERATIONS="rename, hold"', 1)
    refused(daemon, "one.vm.rename", oid, "MANAGE", member, oid, "again")
    assert field(ok(daemon, "one.vm.info", oid), "NAME") == "by-member"
    # the owner is still ruled by the group: rename is USE, so it passes
    ok(daemon, "one.vm.rename", oid, "by-owner", session=owner[1])
    # a list without the operation leaves it to the next source
    ok(daemon, "one.user.update", member[0], 'VM_ADMIN_OPERATIONS="migrate"', 0)
    ok(daemon, "one.vm.rename", oid, "member-again", session=member[1])


def test_admin_operations_by_default_and_moved_by_a_group(daemon, people):
    gid, owner, member, oid = people
    # recover and the strings of migrate/delete need ADMIN by default, even from the owner
    refused(daemon, "one.vm.recover", oid, "ADMIN", owner, oid, 5)
    refused(daemon, "one.vm.action", oid, "ADMIN", owner, "migrate", oid)
    refused(daemon, "one.vm.action", oid, "ADMIN", owner, "delete", oid)
    # an unknown string is checked for MANAGE, then refused as not supported
    assert fails(daemon, "one.vm.action", "fly", oid, session=owner[1]) == (
        '[one.vm.action] Action "fly" is not supported', ACTION, -1)
    refused(daemon, "one.vm.action", oid, "MANAGE", member, "fly", oid)
    # the group moves delete (recover 3, 4 and 5, delete-recreate too) to MANAGE
    ok(daemon, "one.group.update", gid, 'VM_MANAGE_OPERATIONS="delete"', 0)
    assert fails(daemon, "one.vm.action", "migrate", oid, session=owner[1]) == (
        f"[one.vm.action] User [{owner[0]}] : Not authorized to perform ADMIN VM [{oid}].",
        AUTHZ, -1)
    assert fails(daemon, "one.vm.action", "delete", oid, session=owner[1]) == (
        '[one.vm.action] Action "delete" is not supported', ACTION, -1)
    refused(daemon, "one.vm.recover", oid, "MANAGE", member, oid, 5)
    assert ok(daemon, "one.vm.recover", oid, 5, session=owner[1]) == oid
    assert num(ok(daemon, "one.vm.info", oid), "STATE") == 6  # DONE


def test_a_group_lets_its_users_terminate_with_use(daemon, people):
    gid, owner, member, oid = people
    refused(daemon, "one.vm.action", oid, "MANAGE", member, "terminate", oid)
    # ADMIN > MANAGE > USE within one source: naming terminate in USE alone moves it
    ok(daemon, "one.group.update", gid, 'VM_USE_OPERATIONS="terminate"', 0)
    assert ok(daemon, "one.vm.action", "terminate-hard", oid, session=member[1]) == oid
    assert num(ok(daemon, "one.vm.info", oid), "STATE") == 6
    # other operations are still the configuration's
    refused(daemon, "one.vm.action", oid, "MANAGE", member, "hold", oid)


def test_unknown_words_are_refused_and_nothing_changes(daemon, people):
    gid, owner, member, oid = people
    ok(daemon, "one.user.update", member[0], 'VM_USE_OPERATIONS="rename"\nA="1"', 0)
    ok(daemon, "one.group.update", gid, 'VM_USE_OPERATIONS="hold"\nB="2"', 0)
    before_user = ok(daemon, "one.user.info", member[0])
    before_group = ok(daemon, "one.group.info", gid)
    for mode in (0, 1):
        assert fails(daemon, "one.user.update", member[0],
                     'VM_ADMIN_OPERATIONS="migrate, Fly"', mode) == (
            "[one.user.update] Cannot update template. Unknown vm operation: fly",
            INTERNAL, -1)
        assert fails(daemon, "one.group.update", gid, 'VM_USE_OPERATIONS="hold,,nope"',
                     mode) == (
            "[one.group.update] Cannot update template. Unknown vm operation: nope",
            INTERNAL, -1)
    assert ok(daemon, "one.user.info", member[0]) == before_user
    assert ok(daemon, "one.group.info", gid) == before_group
    # words are case-blind and blanks around them do not matter
    ok(daemon, "one.user.update", member[0], 'VM_USE_OPERATIONS=" Rename , HOLD "', 1)
    ok(daemon, "one.vm.rename", oid, "case-blind", session=member[1])
    # hold is USE now: the member gets past the right to the state's refusal
    assert fails(daemon, "one.vm.action", "hold", oid, session=member[1])[:2] == (
        '[one.vm.action] Error performing action "hold": This action is not available for '
        "state HOLD", ACTION)
    assert template_dict(ok(daemon, "one.user.info", member[0])) == {
        "A": "1", "VM_USE_OPERATIONS": " Rename , HOLD "}


def test_group_update_rights_errors_and_document(daemon, people):
    gid, owner, member, oid = people
    assert fails(daemon, "one.group.update", gid, 'X="1"', 0, session=member[1]) == (
        f"[one.group.update] User [{member[0]}] : Not authorized to perform MANAGE GROUP "
        f"[{gid}].", AUTHZ, -1)
    assert fails(daemon, "one.group.update", 99999, 'X="1"', 0) == (
        "[one.group.update] Error getting group [99999].", NO_EXISTS, 99999)
    assert fails(daemon, "one.group.update", gid, 'X="1"', 2) == (
        "[one.group.update] Wrong update type", API, -1)
    ok(daemon, "one.group.update", gid, 'X="1"\nV=[A="b"]', 0)
    ok(daemon, "one.group.update", gid, 'Y="2"\nX="3"', 1)
    doc = ok(daemon, "one.group.info", gid)  # ok() validates it against group.xsd
    assert template_dict(doc) == {"X": "3", "Y": "2", "V": {"A": "b"}}
    ok(daemon, "one.group.update", gid, 'Z="4"', 0)
    assert template_dict(ok(daemon, "one.group.info", gid)) == {"Z": "4"}
    listed = parse(ok(daemon, "one.grouppool.info"))
    mine = [g for g in listed.findall("GROUP") if g.findtext("ID") == str(gid)]
    assert [g.findtext("TEMPLATE/Z") for g in mine] == ["4"]
