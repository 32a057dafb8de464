"""The pieces of the db tools that need no daemon: the command line, the lock, a
backup file's inspection."""

from __future__ import annotations

import os
import re
import sqlite3

import pytest

from oned_images.cli import build_parser
from oned_images.model.settings import DbSettings
from oned_images.store.backup import BackupError, check_file
from oned_images.store.fsck import Finding
from oned_images.store.lock import DatabaseInUse, DatabaseLock, daemon_running


@pytest.mark.parametrize("argv, expected", [
    (["db", "--config", "X", "status"], {"config": "X", "action": "status"}),
    (["db", "status", "--config", "Y"], {"config": "Y", "action": "status"}),
    (["db", "backup"], {"action": "backup", "file": None, "force": False, "config": None}),
    (["db", "--config", "X", "backup", "--force", "b.db"],
     {"action": "backup", "file": "b.db", "force": True, "config": "X"}),
    (["db", "restore", "b.db", "--force"], {"action": "restore", "file": "b.db", "force": True}),
    (["db", "fsck"], {"action": "fsck", "repair": False}),
    (["db", "fsck", "--repair"], {"action": "fsck", "repair": True}),
])
def test_db_command_line(argv, expected):
    args = vars(build_parser().parse_args(argv))
    assert {k: args[k] for k in expected} == expected


def test_restore_needs_a_file(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["db", "restore"])
    assert exc.value.code == 2
    assert "the following arguments are required: FILE" in capsys.readouterr().err


def test_sqlite_lock_names_its_holder_and_dies_with_it(tmp_path):
    settings = DbSettings(path=str(tmp_path / "one.db"))
    first = DatabaseLock(settings)
    first.acquire("oned-images serve")
    assert re.fullmatch(r"The database .*/one\.db is in use by oned-images serve "
                        r"\(pid \d+ on \S+\)", daemon_running(settings))
    with pytest.raises(DatabaseInUse, match=rf"in use by oned-images serve \(pid {os.getpid()} "):
        DatabaseLock(settings).acquire("oned-images db restore")
    first.release()
    assert daemon_running(settings) is None
    with DatabaseLock(settings) as again:
        again.acquire("oned-images db restore")
        assert again.held
    assert not again.held


def test_check_file_refuses_what_is_not_a_backup(tmp_path):
    missing = tmp_path / "none.db"
    with pytest.raises(BackupError, match=f"^{missing}: no such backup file$"):
        check_file(str(missing))
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(BackupError, match=r"not an oned-images database \(no schema_version"):
        check_file(str(other))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 4096)
    with pytest.raises(BackupError, match=f"^{junk}: "):
        check_file(str(junk))


def test_finding_lines():
    found = Finding("image 3", "RUNNING_VMS is 2, VMS lists 0", "RUNNING_VMS set to 0")
    assert found.line(repair=False) == "image 3: RUNNING_VMS is 2, VMS lists 0"
    assert found.line(repair=True) == ("image 3: RUNNING_VMS is 2, VMS lists 0 -> "
                                       "RUNNING_VMS set to 0")
    assert Finding("image 4", "broken").line(repair=True) == "image 4: broken -> NOT repaired"
    assert Finding("image 5", "LOCKED", note=True).line(repair=True) == "note: image 5: LOCKED"
