"""vm_ops: the words of VM_*_OPERATIONS, the order of the sources, the configuration."""

from __future__ import annotations

import pytest

from oned_images import config
from oned_images.domain import vm_ops
from oned_images.domain.permissions import Op
from oned_images.template import Template


def test_words_stand_for_their_operations():
    assert vm_ops.operations(" Migrate ,disk-snapshot,,") == {
        "migrate", "live-migrate", "poweroff-migrate", "poweroff-hard-migrate",
        "disk-snapshot-create", "disk-snapshot-delete", "disk-snapshot-revert",
        "disk-snapshot-rename"}
    assert vm_ops.operations("") == frozenset()
    with pytest.raises(vm_ops.UnknownOperation, match="^Unknown vm operation: teleport$"):
        vm_ops.operations("hold, Teleport")
    assert vm_ops.operations("hold, teleport", strict=False) == {"hold"}


def test_defaults_are_oned_conf_s():
    d = vm_ops.DEFAULTS
    for name in ("migrate", "delete", "delete-recreate", "recover", "retry", "deploy",
                 "resched", "unresched", "backup", "restore"):
        assert d.right(name) is Op.ADMIN, name
    for name in ("terminate", "terminate-hard", "hold", "release", "rename", "disk-attach",
                 "disk-detach", "disk-saveas", "disk-snapshot-rename", "poweroff-hard"):
        assert d.right(name) is Op.MANAGE, name
    assert d.right("chown") is None


def test_higher_right_wins_within_a_source_and_the_first_naming_source_decides():
    both = vm_ops.OpClasses.parse("", "hold", "hold, rename")
    assert both.right("hold") is Op.MANAGE and both.right("rename") is Op.USE
    user = vm_ops.OpClasses.parse("rename", "", "")
    group = vm_ops.OpClasses.parse("", "", "rename, hold")
    assert vm_ops.right_for("rename", user, group, vm_ops.DEFAULTS) is Op.ADMIN
    assert vm_ops.right_for("hold", user, group, vm_ops.DEFAULTS) is Op.USE
    assert vm_ops.right_for("deploy", user, group, vm_ops.DEFAULTS) is Op.ADMIN
    assert vm_ops.right_for("deploy", None, None, vm_ops.OpClasses()) is Op.MANAGE


def test_templates_without_lists_leave_the_decision_to_the_next_source():
    assert vm_ops.OpClasses.of_template(None) is None
    assert vm_ops.OpClasses.of_template(Template.parse('A="1"\nVM_USE_OPERATIONS=""')) is None
    got = vm_ops.OpClasses.of_template(Template.parse('VM_USE_OPERATIONS="hold, fly"'))
    assert got == vm_ops.OpClasses(use=frozenset({"hold"}))  # stored before the check
    with pytest.raises(vm_ops.UnknownOperation):
        vm_ops.check_template(Template.parse('VM_ADMIN_OPERATIONS="fly"'))
    vm_ops.check_template(Template.parse('X=[VM_ADMIN_OPERATIONS="fly"]'))  # not a list


def test_action_strings_are_action_from_str_s():
    assert vm_ops.ACTION_STRINGS["disk-snapshot-snap-delete"] == "disk-snapshot-delete"
    assert "disk-snapshot-delete" not in vm_ops.ACTION_STRINGS
    assert vm_ops.ACTION_STRINGS["terminate-hard"] == "terminate-hard"
    assert "fly" not in vm_ops.ACTION_STRINGS


def test_configuration_lists_replace_the_defaults_one_by_one():
    conf = config.parse('VM_ADMIN_OPERATIONS="migrate"\nVM_USE_OPERATIONS="terminate"')
    assert conf.vm_ops.admin == vm_ops.operations("migrate")
    assert conf.vm_ops.manage == vm_ops.operations(vm_ops.DEFAULT_MANAGE)
    assert conf.vm_ops.right("deploy") is None
    assert conf.vm_ops.right("terminate") is Op.MANAGE
    assert config.parse("").vm_ops == vm_ops.DEFAULTS
    with pytest.raises(config.ConfigError,
                       match=r"^f:2: VM_MANAGE_OPERATIONS: Unknown vm operation: fly \(known: "):
        config.parse('PORT="2633"\nVM_MANAGE_OPERATIONS="hold, fly"', "f")
    with pytest.raises(config.ConfigError, match="expected a single value"):
        config.parse('VM_USE_OPERATIONS=[A="b"]')
