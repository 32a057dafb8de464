"""The man page is generated from the argparse help (scripts/manpage): the committed
copy, installed with the wheel, must match what the current parser produces."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _body(text: str) -> list[str]:
    # the .TH line carries the generation date
    return [line for line in text.splitlines() if not line.startswith(".TH ")]


def test_committed_man_page_is_current(tmp_path):
    pytest.importorskip("argparse_manpage")
    out = tmp_path / "oned-images.1"
    done = subprocess.run([str(REPO / "scripts" / "manpage"), str(out)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    committed = (REPO / "man" / "oned-images.1").read_text()
    assert _body(out.read_text()) == _body(committed), "stale man page: run scripts/manpage"
    assert committed.startswith('.TH ONED\\-IMAGES "1" ')
    for section in ("SYNOPSIS", "FILES", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"):
        assert f"\n.SH {section}\n" in committed, section
