"""Configuration search order and the driver-tree checks made at start (issue 8)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from oned_images import config
from oned_images.config import DEFAULT_CONFIG_FILE, ConfigError, DriverSettings, find_config
from oned_images.driver import checks
from oned_images.driver.checks import Tool, check_drivers, missing_tools, read_tools

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_system_config(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "SYSTEM_CONFIG_FILE", tmp_path / "etc-one" / "oned-images.conf")
    monkeypatch.delenv("ONE_LOCATION", raising=False)
    return config


def test_config_search_order(no_system_config, monkeypatch, tmp_path):
    assert find_config() == (DEFAULT_CONFIG_FILE, "packaged default")
    system = config.SYSTEM_CONFIG_FILE
    system.parent.mkdir()
    system.write_text("")
    assert find_config() == (system, "system")
    one = tmp_path / "one"
    monkeypatch.setenv("ONE_LOCATION", str(one))
    assert find_config() == (system, "system")  # $ONE_LOCATION/etc has no file: next
    (one / "etc").mkdir(parents=True)
    (one / "etc" / "oned-images.conf").write_text("")
    assert find_config() == (one / "etc" / "oned-images.conf", "$ONE_LOCATION")
    assert find_config(tmp_path / "given.conf") == (tmp_path / "given.conf", "--config")


def test_load_records_where_the_config_came_from(no_system_config, tmp_path):
    conf = tmp_path / "x.conf"
    conf.write_text("PORT = 1234\n")
    loaded = config.load(conf)
    assert (loaded.port, loaded.source_file, loaded.source_why) == (1234, str(conf), "--config")
    default = config.load()
    assert (default.source_file, default.source_why) == (str(DEFAULT_CONFIG_FILE),
                                                         "packaged default")
    assert default.driver.remotes == str(REPO / "drivers")


def _bin_without(tmp_path: Path, absent: str) -> str:
    """A PATH of one directory linking every fs tool but ``absent``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in read_tools(REPO / "drivers" / "datastore" / "fs" / "tools"):
        found = shutil.which(tool.command)
        if tool.command != absent and found:
            (bindir / tool.command).symlink_to(found)
    return str(bindir)


def test_fs_without_qemu_img(tmp_path):
    settings = DriverSettings(allowed=("dummy", "fs"), remotes=str(REPO / "drivers"))
    path = _bin_without(tmp_path, "qemu-img")
    present = {t.command for t in read_tools(REPO / "drivers/datastore/fs/tools")
               if shutil.which(t.command)}
    assert "qemu-img" in present, "this test needs the fs tools installed"
    missing = missing_tools(settings, path)
    expected = [("fs", Tool("qemu-img", "qemu-utils",
                            "cp and stat of non-raw images, conversion to DRIVER, qcow2 "
                            "datablocks, clone and snapshots (raw images work without it)"))]
    # tools this machine lacks anyway are not this test's business
    assert [m for m in missing if m[1].command in present] == expected


def _tree(tmp_path: Path) -> Path:
    remotes = tmp_path / "drivers"
    shutil.copytree(REPO / "drivers", remotes,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return remotes


def test_shipped_scripts_get_their_execute_bits_back(tmp_path, monkeypatch):
    remotes = _tree(tmp_path)
    for f in (remotes / "datastore").rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    monkeypatch.setattr(checks, "SHIPPED_DRIVERS", remotes)
    check_drivers(DriverSettings(allowed=("dummy", "fs"), remotes=str(remotes)), os.defpath)
    modes = {f.relative_to(remotes).as_posix(): f.stat().st_mode & 0o777
             for f in (remotes / "datastore").rglob("*") if f.is_file()}
    assert modes["datastore/fs/cp"] == 0o755
    assert modes["datastore/dummy/stat"] == 0o755
    assert modes["datastore/common/drv_action.py"] == 0o755
    assert modes["datastore/common/libfs.sh"] == 0o644  # sourced, no #!
    assert modes["datastore/fs/tools"] == 0o644


def test_operator_scripts_are_not_touched(tmp_path):
    remotes = _tree(tmp_path)
    (remotes / "datastore" / "fs" / "cp").chmod(0o644)
    check_drivers(DriverSettings(allowed=("fs",), remotes=str(remotes)), os.defpath)
    assert (remotes / "datastore" / "fs" / "cp").stat().st_mode & 0o777 == 0o644


def test_remotes_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(ConfigError) as exc:
        check_drivers(DriverSettings(remotes=str(f)), os.defpath)
    assert str(exc.value) == f"DATASTORE_MAD REMOTES {f} is not a readable directory"


def test_bad_tools_line(tmp_path):
    f = tmp_path / "tools"
    f.write_text("# c p w\nqemu-img qemu-utils\n")
    with pytest.raises(ConfigError) as exc:
        read_tools(f)
    assert str(exc.value) == f"{f}:2: expected <command> <package> <what fails>"
