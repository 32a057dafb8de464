"""`pip install .` gives a daemon that works with no checkout (issue 8).

A wheel is built from a copy of the source tree, installed into a fresh venv in
a temp dir, and run from another directory: the drivers and the default
configuration must come from the wheel, even when the installer dropped the
scripts' execute bits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import pyone
import pytest

from tests.support.daemon import REPO, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only, pytest.mark.timeout(300)]

SOURCES = ("oned_images", "drivers", "etc", "man", "web", "setup.py", "setup.cfg",
           "pyproject.toml", "MANIFEST.in", "README.md")


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, **kw)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv holding only the wheel built from this checkout (dependencies are reused
    from the system site-packages; the checkout itself is not on the path)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_data", "node_modules")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    wheels = tmp / "wheels"
    # no build isolation: setuptools and wheel are in the test extra, so no network
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(wheels), str(src)], cwd=tmp)
    assert build.returncode == 0, build.stderr
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    assert made.returncode == 0, made.stderr
    (wheel,) = wheels.glob("oned_images-*.whl")
    inst = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                 "--no-index", str(wheel)], cwd=tmp)
    assert inst.returncode == 0, inst.stderr
    shutil.rmtree(src)
    return venv


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ONE_LOCATION", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp / "home"), ONE_AUTH=str(tmp / "one_auth"), **extra)
    return env


def test_wheel_carries_drivers_and_config(venv, tmp_path):
    code = ("import oned_images, oned_images.config as c; print(oned_images.__file__); "
            "print(c.DEFAULT_CONFIG_FILE); print(c.DriverSettings().remotes)")
    out = _run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, env=_env(tmp_path))
    assert out.returncode == 0, out.stderr
    pkg = next((venv / "lib").glob("python3*/site-packages/oned_images"))
    assert out.stdout.splitlines() == [
        str(pkg / "__init__.py"), str(pkg / "_data" / "etc" / "oned-images.conf"),
        str(pkg / "_data" / "drivers")]
    scripts = sorted(p.relative_to(pkg / "_data" / "drivers").as_posix()
                     for p in (pkg / "_data" / "drivers").rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
    expected = sorted(p.relative_to(REPO / "drivers").as_posix()
                      for p in (REPO / "drivers").rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts)
    assert scripts == expected
    page = venv / "share" / "man" / "man1" / "oned-images.1"
    assert page.read_text() == (REPO / "man" / "oned-images.1").read_text()
    # with no --config and nothing in $ONE_LOCATION or /etc/one: the packaged default
    if Path("/etc/one/oned-images.conf").exists():
        pytest.skip("/etc/one/oned-images.conf exists on this machine")
    (tmp_path / "home").mkdir()
    status = _run([str(venv / "bin" / "oned-images"), "db", "status"], cwd=tmp_path,
                  env=_env(tmp_path))
    db = tmp_path / "home" / ".local" / "share" / "oned-images" / "one.db"
    assert (status.returncode, status.stdout, status.stderr) == (
        1, "", f"oned-images: no database yet ({db}): the first `oned-images serve` "
               "creates it\n")


def test_installed_daemon_copies_and_creates_images(venv, tmp_path):
    pkg = next((venv / "lib").glob("python3*/site-packages/oned_images"))
    # an installer that drops execute bits: the daemon gives them back at start
    for script in (pkg / "_data" / "drivers" / "datastore").rglob("*"):
        if script.is_file():
            script.chmod(0o644)
    one_location = tmp_path / "one"
    (one_location / "etc").mkdir(parents=True)
    conf = one_location / "etc" / "oned-images.conf"
    conf.write_text((pkg / "_data" / "etc" / "oned-images.conf").read_text()
                    + 'PORT = 0\nLISTEN_ADDRESS = "127.0.0.1"\n'
                      'LOG = [ SYSTEM = "std", DEBUG_LEVEL = 3 ]\n')
    (tmp_path / "home").mkdir()
    (tmp_path / "one_auth").write_text("oneadmin:installed\n")
    port_file = tmp_path / "port"
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "oned-images"), "serve", "--port-file", str(port_file)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
            env=_env(tmp_path, ONE_LOCATION=str(one_location)))
    base = Path("/var/tmp") / f"oned-images-install-{os.getpid()}"
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        one = pyone.OneServer(f"http://127.0.0.1:{port_file.read_text()}/RPC2",
                              session="oneadmin:installed", timeout=30)
        base.mkdir(parents=True, exist_ok=True)
        raw = base / "disk.raw"
        raw.write_bytes(b"\x07" * (2 * 1024 * 1024))
        iid = one.image.allocate(f'NAME="from-wheel"\nPATH="{raw}"', 1)
        did = one.image.allocate('NAME="empty"\nTYPE="DATABLOCK"\nSIZE="5"', 1)
        for oid in (iid, did):
            wait_for(lambda oid=oid: one.image.info(oid).STATE in (1, 5), timeout=60)
        img, blk = one.image.info(iid), one.image.info(did)
        assert (img.STATE, img.FORMAT, img.SIZE) == (1, "raw", 2), log_path.read_text()
        assert Path(img.SOURCE).read_bytes() == raw.read_bytes()
        assert Path(img.SOURCE).parent == one_location / "var" / "datastores" / "1"
        assert (blk.STATE, blk.SIZE) == (1, 5), log_path.read_text()
        assert Path(blk.SOURCE).stat().st_size == 5 * 1024 * 1024
        # the Images page, from the wheel's package data (no checkout, no node)
        page = urlopen(f"http://127.0.0.1:{port_file.read_text()}/", timeout=30)
        assert page.read() == (REPO / "web" / "dist" / "index.html").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    text = log_path.read_text()
    assert (f"oned-images starting: config {conf} ($ONE_LOCATION), database "
            f"{one_location}/var/one.db, datastores {one_location}/var/datastores, "
            f"drivers {pkg}/_data/drivers") in text, text
    assert proc.returncode == 0, text
