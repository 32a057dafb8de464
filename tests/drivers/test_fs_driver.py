"""Run the production ``fs`` datastore driver scripts on real files.

Each test builds a DS_DRIVER_ACTION_DATA document (the layout oned 7.0
serialises, drivers.md section 2.3), base64-encodes it and runs
``drivers/datastore/fs/<action> <id>`` with the document on stdin, the way
OpenNebula's one_datastore.rb (and our daemon) call it.

Needs: bash, python3, qemu-utils (qemu-img, qemu-io), gzip, bzip2,
xz-utils, e2fsprogs, xfsprogs, util-linux.  Python: stdlib + pytest.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import http.server
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FS_DIR = ROOT / "drivers" / "datastore" / "fs"
ACTIONS = ["cp", "mkfs", "clone", "rm", "stat", "monitor",
           "snap_delete", "snap_revert", "snap_flatten"]
LOG_RE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s")
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


# --------------------------------------------------------------- helpers --

def cdata(value) -> str:
    return "<![CDATA[" + str(value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def elements(values: dict, wrap: set[str] | None = None) -> str:
    out = []
    for key, val in values.items():
        if val is None:
            continue
        if isinstance(val, dict):
            out.append(f"<{key}>{elements(val, set(val))}</{key}>")
        elif wrap is not None and key in wrap:
            out.append(f"<{key}>{cdata(val)}</{key}>")
        else:
            out.append(f"<{key}>{val}</{key}>")
    return "".join(out)


CDATA_FIELDS = {"SOURCE", "PATH", "FORMAT", "FS", "DS_MAD", "TM_MAD", "BASE_PATH"}


def image_xml(**fields) -> str:
    template = {"DEV_PREFIX": "vd"}
    template.update(fields.pop("TEMPLATE", {}) or {})
    img = {
        "ID": 12, "UID": 0, "GID": 0, "UNAME": "oneadmin", "GNAME": "oneadmin",
        "NAME": "test-image", "TYPE": 0, "DISK_TYPE": 0, "PERSISTENT": 0,
        "REGTIME": 1732690000, "MODTIME": 0, "SOURCE": "", "PATH": "", "FORMAT": "",
        "FS": "", "SIZE": 0, "STATE": 4, "PREV_STATE": 4, "RUNNING_VMS": 0,
        "CLONING_OPS": 0, "CLONING_ID": -1, "TARGET_SNAPSHOT": -1,
        "DATASTORE_ID": 1, "DATASTORE": "default", "VMS": "", "CLONES": "",
        "APP_CLONES": "",
    }
    img.update(fields)
    body = elements(img, CDATA_FIELDS)
    body += f"<TEMPLATE>{elements(template, set(template))}</TEMPLATE>"
    body += ("<SNAPSHOTS><ALLOW_ORPHANS><![CDATA[NO]]></ALLOW_ORPHANS>"
             "<CURRENT_BASE><![CDATA[-1]]></CURRENT_BASE>"
             "<NEXT_SNAPSHOT><![CDATA[0]]></NEXT_SNAPSHOT></SNAPSHOTS>"
             "<BACKUP_INCREMENTS></BACKUP_INCREMENTS><BACKUP_DISK_IDS></BACKUP_DISK_IDS>")
    return f"<IMAGE>{body}</IMAGE>"


def datastore_xml(base_path: str, template: dict, ds_type: int = 0) -> str:
    ds = {
        "ID": 1, "UID": 0, "GID": 0, "UNAME": "oneadmin", "GNAME": "oneadmin",
        "NAME": "default", "DS_MAD": "fs", "TM_MAD": "local", "BASE_PATH": base_path,
        "TYPE": ds_type, "DISK_TYPE": 0, "STATE": 0, "CLUSTERS": "<ID>0</ID>",
        "TOTAL_MB": 1000, "FREE_MB": 900, "USED_MB": 100, "IMAGES": "<ID>12</ID>",
    }
    tpl = {"ALLOW_ORPHANS": "FORMAT", "CLONE_TARGET": "SYSTEM", "DISK_TYPE": "FILE",
           "DS_MAD": "fs", "LN_TARGET": "SYSTEM", "TM_MAD": "local",
           "TYPE": "IMAGE_DS"}
    tpl.update(template)
    tpl = {k: v for k, v in sorted(tpl.items()) if v is not None}
    return (f"<DATASTORE>{elements(ds, CDATA_FIELDS)}"
            f"<TEMPLATE>{elements(tpl, set(tpl))}</TEMPLATE></DATASTORE>")


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip() and not LOG_RE.match(ln)]

    @property
    def error(self) -> str:
        return "; ".join(ln.strip() for ln in self.error_lines)


class Driver:
    """A fake OpenNebula layout: BASE_PATH, a safe input dir, HOME, TMPDIR."""

    def __init__(self, root: Path):
        self.root = root
        self.inp = root / "input"
        self.home = root / "home"
        self.tmpdir = root / "tmpdir"
        for d in (self.inp, self.home, self.tmpdir):
            d.mkdir(parents=True, exist_ok=True)
        # oned sends BASE_PATH with a double slash: /var/lib/one//datastores/1
        self.base_path = f"{root}/var//datastores/1"
        self.base = Path(os.path.normpath(self.base_path))
        self.safe_dirs = f"/var/tmp {self.inp}"
        self.restricted_dirs = "/"
        self.user: str | None = None

    def doc(self, image: dict | None = None, ds_template: dict | None = None,
            ds_type: int = 0, base_path: str | None = None, stat: bool = False) -> str:
        tpl = {"SAFE_DIRS": self.safe_dirs, "RESTRICTED_DIRS": self.restricted_dirs}
        tpl.update(ds_template or {})
        ds = datastore_xml(self.base_path if base_path is None else base_path, tpl, ds_type)
        if image is None:
            img = ""
        elif stat:
            img = f"<IMAGE><PATH>{cdata(image['PATH'])}</PATH></IMAGE>"
        else:
            img = image_xml(**image)
        return f"<DS_DRIVER_ACTION_DATA>{img}{ds}</DS_DRIVER_ACTION_DATA>"

    def env(self) -> dict:
        # ONED_URL_POLICY: these images are oneadmin's (test_fs_security.py has the rest)
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                "LANG": "C", "TMPDIR": str(self.tmpdir), "ONED_URL_POLICY": "open"}

    def run(self, action: str, image: dict | None = None, oid: str = "12",
            timeout: int = 50, stdin: bytes | None = None, argv: list[str] | None = None,
            **kw) -> Result:
        if stdin is None:
            stdin = base64.b64encode(self.doc(image, stat=(action == "stat"), **kw).encode())
        env = self.env()
        cmd = [str(FS_DIR / action)] + (argv if argv is not None else [oid])
        if self.user:
            env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            cmd = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}",
                   "--clear-groups", "--"] + cmd
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout,
                              env=env, cwd=self.root, check=False)
        res = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        # temporary files always go away
        assert list(self.tmpdir.iterdir()) == [], res
        if res.rc != 0:
            assert res.out == "", res
            assert len(res.error_lines) == 1, res
            assert not res.error.startswith("-"), res
        return res

    def cp(self, path, template: dict | None = None, **kw) -> Result:
        return self.run("cp", {"PATH": str(path), "TEMPLATE": template or {}}, **kw)

    def base_files(self) -> list[str]:
        return sorted(p.name for p in self.base.iterdir()) if self.base.exists() else []


@pytest.fixture
def drv(tmp_path) -> Driver:
    return Driver(tmp_path)


def ok(res: Result) -> Result:
    assert res.rc == 0, res
    return res


def failed(res: Result, text: str) -> Result:
    assert res.rc != 0, res
    assert text in res.error, res
    return res


def cp_result(drv: Driver, res: Result) -> tuple[Path, str]:
    ok(res)
    assert res.out.endswith("\n") and res.out.count("\n") == 1, res
    src, fmt = res.out.split()
    assert src.startswith(drv.base_path + "/"), res
    assert re.fullmatch(r"[0-9a-f]{32}", src.rsplit("/", 1)[1]), res
    path = Path(src)
    assert path.is_file()
    assert drv.base_files() == [path.name], "partial files left behind"
    return path, fmt


def qemu_info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                         capture_output=True, check=True)
    return json.loads(out.stdout)


def sparse_raw(path: Path, size: int = 8 * MiB, data_at: int = 2 * MiB,
               data: bytes | None = None) -> bytes:
    """A raw disk of `size` bytes, holes everywhere except 1 MiB of data."""
    data = data if data is not None else os.urandom(MiB)
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.seek(data_at)
        fh.write(data)
    return path.read_bytes()


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def raw_bytes(path: Path, tmp: Path) -> bytes:
    """The guest-visible content of an image of any format."""
    out = tmp / "content.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(out)], check=True)
    data = out.read_bytes()
    out.unlink()
    return data


# ------------------------------------------------------------ HTTP server --

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files of `directory`; honours Range unless the path starts
    with /norange/; /slow/ sends 64 KiB every 50 ms."""

    directory: Path
    requests: list

    def log_message(self, *args):  # silence
        pass

    def _serve(self, body: bool):
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        path = self.path.split("?", 1)[0]
        ranged = not path.startswith("/norange/")
        slow = path.startswith("/slow/")
        name = path.removeprefix("/norange/").removeprefix("/slow/").lstrip("/")
        target = self.directory / name
        if not name or not target.is_file():
            self.send_error(404)
            return
        data = target.read_bytes()
        rng = self.headers.get("Range") if ranged else None
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m:
            start, end = int(m[1]), int(m[2] or len(data) - 1)
            end = min(end, len(data) - 1)
            chunk = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            chunk = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            try:
                step = 65536 if slow else len(chunk) or 1
                for pos in range(0, len(chunk), step):
                    self.wfile.write(chunk[pos:pos + step])
                    if slow:
                        self.wfile.flush()
                        time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    handler = type("Handler", (_Handler,), {"directory": served, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.dir = served
    server.requests = handler.requests
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------ the scripts --

#: the actions that are Python scripts (one interpreter, no shell: start-up is most of
#: a small image's copy time); the others are bash
PYTHON_ACTIONS = ["cp", "mkfs", "stat", "monitor"]
PYTHON_SHEBANG = "#!/usr/bin/env -S python3 -I -S\n"


def _bash_actions() -> list[str]:
    return [a for a in ACTIONS if a not in PYTHON_ACTIONS]


@pytest.mark.timeout(60)
def test_scripts_are_executable_and_parse():
    for action in ACTIONS:
        script = FS_DIR / action
        assert script.exists(), action
        assert os.access(script, os.X_OK), action
        if action in PYTHON_ACTIONS:
            text = script.read_text()
            assert text.startswith(PYTHON_SHEBANG), action
            compile(text, str(script), "exec")
        else:
            assert script.read_text().startswith("#!/usr/bin/env bash\n"), action
            subprocess.run(["bash", "-n", str(script)], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "drivers/datastore/common/libfs.sh")], check=True)
    text = (ROOT / "drivers/datastore/common/libfs.sh").read_text()
    assert "# Requires Debian packages:" in text


@pytest.mark.timeout(60)
def test_python_actions_run_from_any_path_and_ignore_python_variables(drv):
    """The Python actions find common/ from their own path, called by a relative path
    from their directory too, and their interpreter ignores PYTHON* variables (-I)."""
    doc = base64.b64encode(drv.doc(None).encode())
    env = {**drv.env(), "PYTHONPATH": str(drv.root), "PYTHONSTARTUP": "/nonexistent"}
    (drv.root / "fs_action.py").write_text("raise SystemExit('imported the wrong module')\n")
    for argv, cwd in (([str(FS_DIR / "monitor"), "1"], drv.root), (["./monitor", "1"], FS_DIR)):
        proc = subprocess.run(argv, input=doc, capture_output=True, env=env, cwd=cwd,
                              check=False, timeout=30)
        assert proc.returncode == 0, proc.stderr.decode()
        assert [line.split("=")[0] for line in proc.stdout.decode().splitlines()] == [
            "USED_MB", "FREE_MB", "TOTAL_MB"]


@pytest.mark.timeout(60)
def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck missing")
    scripts = [str(FS_DIR / a) for a in _bash_actions()] + ["../common/libfs.sh"]
    res = subprocess.run(["shellcheck", "-x", "-P", "SCRIPTDIR", *scripts], cwd=FS_DIR,
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stdout.decode()


@pytest.mark.timeout(60)
def test_drv_action_xpath_helper():
    helper = ROOT / "drivers/datastore/common/drv_action.py"
    doc = ("<DS_DRIVER_ACTION_DATA><IMAGE><PATH><![CDATA[/a b/c]]></PATH>"
           "<FORMAT><![CDATA[]]></FORMAT><TEMPLATE><MD5><![CDATA[x]]></MD5></TEMPLATE>"
           "</IMAGE></DS_DRIVER_ACTION_DATA>")
    b64 = base64.b64encode(doc.encode())
    out = subprocess.run(
        ["python3", str(helper), "/DS_DRIVER_ACTION_DATA/IMAGE/PATH", "IMAGE/FORMAT",
         "IMAGE/TEMPLATE/MD5", "/DS_DRIVER_ACTION_DATA/IMAGE/NOPE", "/OTHER/IMAGE/PATH",
         "IMAGE/TEMPLATE"],
        input=b64, capture_output=True, check=True)
    assert out.stdout == b"/a b/c\0\0x\0\0\0\0"
    bad = subprocess.run(["python3", str(helper), "IMAGE/PATH"], input=b"!!notbase64",
                         capture_output=True, check=False)
    assert bad.returncode == 2 and b"Cannot" in bad.stderr and bad.stdout == b""


@pytest.mark.timeout(60)
def test_bad_stdin_document(drv):
    res = drv.run("cp", stdin=b"this is not base64!")
    failed(res, "Cannot decode driver action data")
    res = drv.run("monitor", stdin=b"")
    failed(res, "Empty driver action data")


# -------------------------------------------------------------------- cp --

@pytest.mark.timeout(60)
def test_cp_raw_keeps_holes(drv):
    src = drv.inp / "disk.raw"
    data = sparse_raw(src)
    dst, fmt = cp_result(drv, drv.cp(src))
    assert fmt == "raw"
    assert dst.read_bytes() == data
    assert allocated(dst) <= allocated(src) + 64 * 1024
    assert allocated(dst) < 2 * MiB


@pytest.mark.timeout(60)
def test_cp_legacy_argv_forms(drv):
    src = drv.inp / "disk.raw"
    sparse_raw(src, size=MiB, data_at=0, data=b"x" * 4096)
    b64 = base64.b64encode(drv.doc({"PATH": str(src)}).encode())
    res = drv.run("cp", argv=[b64.decode(), "12"], stdin=b"")
    assert res.rc == 0 and res.out.split()[1] == "raw", res
    res = drv.run("cp", argv=["-", "12"], stdin=b64)
    assert res.rc == 0 and res.out.split()[1] == "raw", res


@pytest.mark.timeout(60)
def test_cp_qcow2(drv):
    src = drv.inp / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "1G"], check=True)
    dst, fmt = cp_result(drv, drv.cp(src))
    assert fmt == "qcow2"
    assert qemu_info(dst)["virtual-size"] == 1024 * MiB


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_cp_decompresses(drv, kind):
    raw = drv.root / "plain.raw"
    data = sparse_raw(raw)
    comp = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind](data)
    src = drv.inp / f"disk.raw.{kind}"
    src.write_bytes(comp)
    dst, fmt = cp_result(drv, drv.cp(src))
    assert fmt == "raw"
    assert dst.read_bytes() == data
    assert allocated(dst) < 2 * MiB, "decompressed output is not sparse"


@pytest.mark.timeout(60)
def test_cp_no_decompress(drv):
    src = drv.inp / "disk.gz"
    src.write_bytes(gzip.compress(b"a" * 100000))
    dst, fmt = cp_result(drv, drv.cp(src, {"NO_DECOMPRESS": "YES"}))
    assert fmt == "raw"
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.timeout(60)
def test_cp_file_ds_keeps_compression_by_default(drv):
    src = drv.inp / "context.tar.gz"
    src.write_bytes(gzip.compress(b"context" * 1000))
    dst, _ = cp_result(drv, drv.cp(src, ds_type=2))
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.timeout(60)
def test_cp_md5(drv):
    src = drv.inp / "disk.raw.gz"
    data = os.urandom(300000)
    src.write_bytes(gzip.compress(data))
    md5 = hashlib.md5(src.read_bytes()).hexdigest()  # of the raw (compressed) stream
    dst, _ = cp_result(drv, drv.cp(src, {"MD5": md5.upper()}))
    assert dst.read_bytes() == data

    for f in drv.base.iterdir():
        f.unlink()
    res = drv.cp(src, {"MD5": hashlib.md5(data).hexdigest()})
    failed(res, "Hash does not match")
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_cp_sha1(drv):
    src = drv.inp / "disk.raw"
    src.write_bytes(os.urandom(100000))
    sha1 = hashlib.sha1(src.read_bytes()).hexdigest()
    cp_result(drv, drv.cp(src, {"SHA1": sha1}))
    for f in drv.base.iterdir():
        f.unlink()
    failed(drv.cp(src, {"SHA1": "0" * 40}), "Hash does not match")
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_cp_http(drv, http_server):
    data = os.urandom(MiB) + bytes(MiB)
    (http_server.dir / "disk.raw").write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    res = drv.cp(f"{http_server.url}/disk.raw", {"MD5": md5, "LIMIT_TRANSFER_BW": "50M"})
    dst, fmt = cp_result(drv, res)
    assert fmt == "raw" and dst.read_bytes() == data
    assert allocated(dst) < 2 * MiB, "zero blocks of a download are not punched"
    assert "DEBUG: cp: transfer limited to 50M/s" in res.err
    assert len(http_server.requests) == 1, "the source must be fetched once"


@pytest.mark.timeout(60)
def test_cp_killed_leaves_nothing(drv, http_server):
    (http_server.dir / "slow.raw").write_bytes(os.urandom(4 * MiB))
    doc = drv.doc({"PATH": f"{http_server.url}/slow/slow.raw"})
    proc = subprocess.Popen([str(FS_DIR / "cp"), "12"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=drv.env(),
                            cwd=drv.root, start_new_session=True)
    try:
        proc.stdin.write(base64.b64encode(doc.encode()))
        proc.stdin.close()
        proc.stdin = None
        deadline = time.monotonic() + 20
        while not drv.base_files() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert drv.base_files(), "the download never started"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and out == b""
    assert b"interrupted by signal TERM" in err
    assert drv.base_files() == []
    assert list(drv.tmpdir.iterdir()) == []


@pytest.mark.timeout(60)
def test_cp_corrupt_compressed_input(drv):
    src = drv.inp / "bad.raw.gz"
    src.write_bytes(gzip.compress(os.urandom(200000))[:50000])
    res = failed(drv.cp(src), "Error decompressing")
    assert "gzip" in res.error
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_cp_http_compressed_and_ds_bandwidth(drv, http_server):
    data = os.urandom(200000)
    (http_server.dir / "disk.xz").write_bytes(lzma.compress(data))
    res = drv.cp(f"{http_server.url}/disk.xz", ds_template={"LIMIT_TRANSFER_BW": "10M"})
    dst, _ = cp_result(drv, res)
    assert dst.read_bytes() == data


@pytest.mark.timeout(60)
def test_cp_http_404_leaves_nothing(drv, http_server):
    res = drv.cp(f"{http_server.url}/missing.raw")
    failed(res, "Error downloading")
    assert "404" in res.error
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_cp_bad_bandwidth(drv, http_server):
    failed(drv.cp(f"{http_server.url}/x", {"LIMIT_TRANSFER_BW": "1M; rm -rf /"}),
           "Invalid LIMIT_TRANSFER_BW")


@pytest.mark.timeout(60)
def test_cp_missing_file(drv):
    res = drv.cp(drv.inp / "nope.raw")
    failed(res, "Cannot read image file")
    assert "No such file or directory" in res.error
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_cp_unreadable_file(drv):
    if os.geteuid() == 0:
        # root reads anything: run the script as an unprivileged user, in a
        # tree that user can traverse (pytest's tmp_path is root-only)
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv missing")
        root = Path(tempfile.mkdtemp(prefix="fsdrv-"))
        try:
            os.chmod(root, 0o755)
            d = Driver(root)
            for p in (d.inp, d.home, d.tmpdir):
                os.chmod(p, 0o777)
            (root / "var").mkdir(mode=0o777)
            os.chmod(root / "var", 0o777)
            d.user = "65534"
            src = d.inp / "secret.raw"
            src.write_bytes(b"x" * 1024)
            os.chmod(src, 0)
            res = d.cp(src)
            failed(res, "Cannot read image file")
            assert "Permission denied" in res.error
            assert d.base_files() == []
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        src = drv.inp / "secret.raw"
        src.write_bytes(b"x" * 1024)
        os.chmod(src, 0)
        failed(drv.cp(src), "Permission denied")


@pytest.mark.timeout(60)
def test_cp_restricted_paths(drv):
    failed(drv.cp("/etc/passwd"), "Not allowed to copy image file /etc/passwd")
    # prefix trick: SAFE_DIRS=<input> must not allow <input>foo/
    evil = Path(str(drv.inp) + "foo")
    evil.mkdir()
    (evil / "disk.raw").write_bytes(b"x" * 512)
    failed(drv.cp(evil / "disk.raw"), "Not allowed to copy image file")
    # a symlink inside a safe dir that points outside
    (drv.inp / "link.raw").symlink_to("/etc/passwd")
    failed(drv.cp(drv.inp / "link.raw"), "Not allowed to copy image file /etc/passwd")
    # file:// is checked the same way
    failed(drv.cp("file:///etc/passwd"), "Not allowed to copy image file")
    # $HOME is always restricted, even when RESTRICTED_DIRS doesn't cover it
    drv.restricted_dirs = "/nonexistent"
    (drv.home / "disk.raw").write_bytes(b"x" * 512)
    failed(drv.cp(drv.home / "disk.raw"), "Not allowed to copy image file")
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_cp_file_url_and_relative_safe_path(drv):
    src = drv.inp / "disk.raw"
    src.write_bytes(b"y" * 4096)
    dst, _ = cp_result(drv, drv.cp(f"file://{src}"))
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.timeout(60)
def test_cp_converts_to_ds_driver(drv):
    src = drv.inp / "disk.raw"
    data = sparse_raw(src, size=4 * MiB, data_at=MiB)
    dst, fmt = cp_result(drv, drv.cp(src, ds_template={"DRIVER": "qcow2"}))
    assert fmt == "qcow2" and qemu_info(dst)["format"] == "qcow2"
    assert raw_bytes(dst, drv.root) == data


@pytest.mark.timeout(60)
def test_cp_unknown_format_and_backing_file(drv):
    src = drv.inp / "broken.qcow2"
    src.write_bytes(b"QFI\xfb" + b"\xff" * 4000)
    failed(drv.cp(src), "Unknown image format")
    assert drv.base_files() == []
    base = drv.inp / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "10M"], check=True)
    over = drv.inp / "over.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                    str(over)], check=True)
    failed(drv.cp(over), "backing file")
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_cp_unique_destinations(drv):
    src = drv.inp / "disk.raw"
    src.write_bytes(b"z" * 4096)
    outs = {ok(drv.cp(src, oid="5")).out.split()[0] for _ in range(3)}
    assert len(outs) == 3
    assert len(drv.base_files()) == 3


@pytest.mark.timeout(60)
def test_cp_full_disk_leaves_nothing(drv):
    small = drv.root / "small"
    small.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
                           capture_output=True, check=False)
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + mount.stderr.decode().strip())
    try:
        src = drv.inp / "big.raw"
        src.write_bytes(os.urandom(4 * MiB))
        drv.base_path = str(small)
        drv.base = small
        res = drv.cp(src)
        failed(res, "No space left on device")
        assert list(small.iterdir()) == []
        # also when the data arrive through decompression
        gz = drv.inp / "big.raw.gz"
        gz.write_bytes(gzip.compress(src.read_bytes(), compresslevel=1))
        if gz.stat().st_size < MiB:
            failed(drv.cp(gz), "No space left on device")
            assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


# ------------------------------------------------------------------ mkfs --

def mkfs(drv: Driver, size, fmt, fs="", **kw) -> Result:
    return drv.run("mkfs", {"SIZE": size, "FORMAT": fmt, "FS": fs, "TYPE": 2}, **kw)


def mkfs_result(drv: Driver, res: Result) -> Path:
    ok(res)
    assert res.out.count("\n") == 1 and len(res.out.split()) == 1, res
    assert res.out.startswith(drv.base_path + "/"), res
    path = Path(res.out.strip())
    assert path.is_file()
    assert drv.base_files() == [path.name]
    return path


def fs_type(path: Path) -> str:
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(path)],
                         capture_output=True, check=False)
    return out.stdout.decode().strip()


@pytest.mark.timeout(60)
def test_mkfs_raw(drv):
    dst = mkfs_result(drv, mkfs(drv, 16, "raw"))
    assert dst.stat().st_size == 16 * MiB
    assert allocated(dst) < MiB
    assert qemu_info(dst)["format"] == "raw"


@pytest.mark.timeout(60)
def test_mkfs_qcow2(drv):
    dst = mkfs_result(drv, mkfs(drv, 100, "qcow2"))
    info = qemu_info(dst)
    assert info["format"] == "qcow2" and info["virtual-size"] == 100 * MiB


@pytest.mark.timeout(60)
def test_mkfs_ext4_raw_and_qcow2(drv):
    dst = mkfs_result(drv, mkfs(drv, 32, "raw", "ext4"))
    assert fs_type(dst) == "ext4"
    subprocess.run(["dumpe2fs", "-h", str(dst)], capture_output=True, check=True)
    dst.unlink()
    dst = mkfs_result(drv, mkfs(drv, 32, "qcow2", "ext3"))
    assert qemu_info(dst)["format"] == "qcow2"
    plain = drv.root / "plain.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(dst), str(plain)], check=True)
    assert fs_type(plain) == "ext3"


@pytest.mark.timeout(60)
def test_mkfs_ext4_leaves_the_new_file_sparse(drv):
    """A new datablock's journal is left as holes (they read as the zeros mke2fs would
    write): an empty 1 GiB ext4 image takes well under a MiB, not its 32 MiB journal."""
    dst = mkfs_result(drv, mkfs(drv, 1024, "raw", "ext4"))
    assert dst.stat().st_size == 1024 * MiB
    assert allocated(dst) < 2 * MiB
    fsck = subprocess.run(["e2fsck", "-fn", str(dst)], capture_output=True, check=False)
    assert fsck.returncode == 0, fsck.stdout.decode() + fsck.stderr.decode()


@pytest.mark.timeout(60)
def test_mkfs_xfs(drv):
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("xfsprogs missing")
    dst = mkfs_result(drv, mkfs(drv, 320, "raw", "xfs"))
    assert fs_type(dst) == "xfs"
    dst.unlink()
    res = mkfs(drv, 10, "raw", "xfs")
    failed(res, "Error creating xfs file system")
    assert "too small" in res.error
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_mkfs_errors(drv):
    failed(mkfs(drv, 16, "raw", "ntfs"), "Unsupported file system type ntfs")
    failed(mkfs(drv, 16, "raw", "ext4 -O x"), "Unsupported file system type")
    failed(mkfs(drv, 0, "raw"), "Invalid image size")
    failed(mkfs(drv, "10; reboot", "raw"), "Invalid image size")
    failed(mkfs(drv, 16, "vmdk"), "Unsupported image format vmdk")
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_mkfs_save_as_creates_nothing(drv):
    res = ok(mkfs(drv, 16, "save_as"))
    dst = res.out.strip()
    assert dst.startswith(drv.base_path + "/") and len(res.out.split()) == 1
    assert not Path(dst).exists()


# ----------------------------------------------------------------- clone --

def put_image(drv: Driver, name: str, data: bytes | None = None) -> Path:
    drv.base.mkdir(parents=True, exist_ok=True)
    path = drv.base / name
    if data is None:
        sparse_raw(path, size=4 * MiB, data_at=MiB)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.timeout(60)
def test_clone_plain_copy(drv):
    src = put_image(drv, "a" * 32)
    res = ok(drv.run("clone", {"PATH": f"{drv.base_path}/{src.name}", "FORMAT": "raw",
                               "CLONING_ID": 3}, oid="14"))
    dst_s, fmt = res.out.split()
    dst = Path(dst_s)
    assert fmt == "raw" and dst != src and dst.read_bytes() == src.read_bytes()
    assert allocated(dst) < 2 * MiB
    assert sorted(drv.base_files()) == sorted([src.name, dst.name])


@pytest.mark.timeout(60)
def test_clone_converts_to_ds_driver(drv):
    src = put_image(drv, "b" * 32)
    res = ok(drv.run("clone", {"PATH": str(src), "FORMAT": "raw"},
                     ds_template={"DRIVER": "qcow2"}))
    dst_s, fmt = res.out.split()
    assert fmt == "qcow2" and qemu_info(Path(dst_s))["format"] == "qcow2"
    assert raw_bytes(Path(dst_s), drv.root) == src.read_bytes()


@pytest.mark.timeout(60)
def test_clone_missing_source(drv):
    res = drv.run("clone", {"PATH": f"{drv.base}/{'c' * 32}", "FORMAT": "raw"})
    failed(res, "Cannot read source image")
    assert drv.base_files() == []


# -------------------------------------------------------------------- rm --

@pytest.mark.timeout(60)
def test_rm_removes_image_snapshots_and_md5(drv):
    src = put_image(drv, "d" * 32, b"data")
    (drv.base / (src.name + ".snap")).mkdir()
    (drv.base / (src.name + ".snap") / "0").write_bytes(b"s")
    (drv.base / (src.name + ".md5sum")).write_text("x")
    other = put_image(drv, "e" * 32, b"keep")
    ok(drv.run("rm", {"SOURCE": f"{drv.base_path}/{src.name}", "STATE": 1}))
    assert drv.base_files() == [other.name]


@pytest.mark.timeout(60)
def test_rm_missing_is_success(drv):
    drv.base.mkdir(parents=True)
    ok(drv.run("rm", {"SOURCE": f"{drv.base_path}/{'f' * 32}"}))
    # normalised comparison: SOURCE without the double slash
    src = put_image(drv, "g" * 32, b"x")
    ok(drv.run("rm", {"SOURCE": str(src)}))
    assert not src.exists()


@pytest.mark.timeout(60)
def test_rm_refuses_paths_outside_base_path(drv):
    victim = drv.root / "victim"
    victim.write_text("precious")
    for source in (str(victim), f"{drv.base_path}/../../victim", f"{drv.base_path}/..",
                   f"{drv.base_path}/sub/x", "", "relative/x"):
        failed(drv.run("rm", {"SOURCE": source}), "Bad formed or unavailable Image source")
    assert victim.read_text() == "precious"


# ------------------------------------------------------------------ stat --

def stat(drv: Driver, path) -> Result:
    return drv.run("stat", {"PATH": str(path)}, oid="0")


def stat_mb(drv: Driver, path) -> int:
    res = ok(stat(drv, path))
    assert re.fullmatch(r"\d+\n", res.out), res
    return int(res.out)


@pytest.mark.timeout(60)
def test_stat_local_formats(drv):
    raw = drv.inp / "disk.raw"
    sparse_raw(raw, size=5 * MiB + 1, data_at=0)
    assert stat_mb(drv, raw) == 6
    data = raw.read_bytes()
    (drv.inp / "disk.gz").write_bytes(gzip.compress(data))
    (drv.inp / "disk.bz2").write_bytes(bz2.compress(data))
    (drv.inp / "disk.xz").write_bytes(lzma.compress(data))
    for name in ("disk.gz", "disk.bz2", "disk.xz"):
        assert stat_mb(drv, drv.inp / name) == 6, name
    qcow = drv.inp / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "3G"], check=True)
    assert stat_mb(drv, qcow) == 3072
    (drv.inp / "disk.qcow2.gz").write_bytes(gzip.compress(qcow.read_bytes()))
    assert stat_mb(drv, drv.inp / "disk.qcow2.gz") == 3072
    (drv.inp / "empty").write_bytes(b"")
    assert stat_mb(drv, drv.inp / "empty") == 0


@pytest.mark.timeout(60)
def test_stat_directory(drv):
    d = drv.inp / "dir"
    d.mkdir()
    (d / "a").write_bytes(b"x" * (3 * MiB))
    (d / "b").write_bytes(b"y" * 10)
    assert stat_mb(drv, d) in (4, 5)


@pytest.mark.timeout(60)
def test_stat_missing(drv):
    path = drv.inp / "nope.img"
    res = failed(stat(drv, path), f"cannot access '{path}' (No such file or directory)")
    assert res.error == f"cannot access '{path}' (No such file or directory)"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefix", ["", "norange/"])
def test_stat_http(drv, http_server, prefix):
    data = os.urandom(MiB) + bytes(5 * MiB)  # 6 MiB, bigger than the 4 MiB probe
    (http_server.dir / "disk.raw").write_bytes(data)
    (http_server.dir / "disk.raw.gz").write_bytes(gzip.compress(data))
    (http_server.dir / "disk.raw.bz2").write_bytes(bz2.compress(data))
    qcow = drv.root / "q.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "2G"], check=True)
    shutil.copy(qcow, http_server.dir / "disk.qcow2")
    url = f"{http_server.url}/{prefix}"
    assert stat_mb(drv, url + "disk.raw") == 6
    assert stat_mb(drv, url + "disk.raw.gz") == 6
    assert stat_mb(drv, url + "disk.raw.bz2") == 6
    assert stat_mb(drv, url + "disk.qcow2") == 2048
    res = failed(stat(drv, url + "missing.raw"), f"cannot access '{url}missing.raw'")
    assert "404" in res.error


@pytest.mark.timeout(60)
def test_stat_unreachable_url(drv):
    failed(stat(drv, "http://127.0.0.1:1/x.raw"), "cannot access 'http://127.0.0.1:1/x.raw'")
    failed(stat(drv, "ftp://example.org/x.raw"), "Unsupported image source")


# --------------------------------------------------------------- monitor --

@pytest.mark.timeout(60)
def test_monitor(drv):
    res = ok(drv.run("monitor", oid="1"))
    lines = res.out.splitlines()
    assert [ln.split("=")[0] for ln in lines] == ["USED_MB", "FREE_MB", "TOTAL_MB"], res
    vals = {k: int(v) for k, v in (ln.split("=") for ln in lines)}
    assert vals["TOTAL_MB"] > 0 and vals["FREE_MB"] <= vals["TOTAL_MB"]
    assert drv.base.is_dir(), "monitor creates BASE_PATH"


@pytest.mark.timeout(60)
def test_monitor_failure(drv):
    blocker = drv.root / "file"
    blocker.write_text("x")
    res = drv.run("monitor", oid="1", base_path=f"{blocker}/ds/1")
    failed(res, "Cannot create datastore directory")
    failed(drv.run("monitor", oid="1", base_path=""), "BASE_PATH is not set")


# ------------------------------------------------------------- snapshots --

def snap_image(drv: Driver, action: str, source: Path, snap, fmt: str) -> Result:
    return drv.run(action, {"SOURCE": str(source), "TARGET_SNAPSHOT": snap,
                            "FORMAT": fmt, "STATE": 1, "PERSISTENT": 1}, oid="15")


def raw_with_snapshots(drv: Driver) -> Path:
    src = put_image(drv, "9" * 32, b"current" * 100)
    snap = drv.base / (src.name + ".snap")
    snap.mkdir()
    (snap / "0").write_bytes(b"snap-zero" * 100)
    (snap / "1").write_bytes(b"snap-one" * 100)
    (drv.base / (src.name + ".md5sum")).write_text("x")
    return src


@pytest.mark.timeout(60)
def test_snap_delete(drv):
    src = raw_with_snapshots(drv)
    ok(snap_image(drv, "snap_delete", src, 1, "raw"))
    assert sorted(p.name for p in Path(f"{src}.snap").iterdir()) == ["0"]
    assert not Path(f"{src}.md5sum").exists()
    failed(snap_image(drv, "snap_delete", src, 7, "raw"), "Snapshot 7 does not exist")
    failed(snap_image(drv, "snap_delete", src, "../../x", "raw"), "Invalid snapshot id")
    failed(snap_image(drv, "snap_delete", src, -1, "raw"), "Invalid snapshot id")
    failed(snap_image(drv, "snap_delete", drv.root / "x", 0, "raw"),
           "Bad formed or unavailable Image source")


@pytest.mark.timeout(60)
def test_snap_revert_raw(drv):
    src = raw_with_snapshots(drv)
    ok(snap_image(drv, "snap_revert", src, 0, "raw"))
    assert src.read_bytes() == b"snap-zero" * 100
    assert sorted(p.name for p in Path(f"{src}.snap").iterdir()) == ["0", "1"]
    assert not Path(f"{src}.tmp").exists() and not Path(f"{src}.md5sum").exists()
    failed(snap_image(drv, "snap_revert", src, 4, "raw"), "Snapshot 4 does not exist")


@pytest.mark.timeout(60)
def test_snap_flatten_raw(drv):
    src = raw_with_snapshots(drv)
    ok(snap_image(drv, "snap_flatten", src, 1, "raw"))
    assert src.read_bytes() == b"snap-one" * 100
    assert drv.base_files() == [src.name]


def qemu_io(path: Path, cmd: str):
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, str(path)], capture_output=True,
                   check=True)


def qcow2_with_snapshots(drv: Driver) -> Path:
    """OpenNebula's qcow2 layout: SOURCE.snap/0 -> SOURCE, each next file an
    overlay of the previous one, the newest (2) the active layer."""
    drv.base.mkdir(parents=True, exist_ok=True)
    src = drv.base / ("8" * 32)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "4M"], check=True)
    qemu_io(src, "write -P 0xaa 0 64k")
    snap = Path(f"{src}.snap")
    snap.mkdir()
    (snap / "0").symlink_to(src)
    for n in (1, 2):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(snap / str(n - 1)), str(snap / str(n))], check=True)
    qemu_io(snap / "1", "write -P 0xbb 0 64k")
    qemu_io(snap / "2", "write -P 0xcc 0 64k")
    return src


@pytest.mark.timeout(60)
def test_snap_revert_qcow2(drv):
    src = qcow2_with_snapshots(drv)
    snap = Path(f"{src}.snap")
    failed(snap_image(drv, "snap_revert", src, 2, "qcow2"), "active")
    ok(snap_image(drv, "snap_revert", src, 1, "qcow2"))
    info = qemu_info(snap / "2")
    assert info["format"] == "qcow2" and info["backing-filename"] == "1"
    assert raw_bytes(snap / "2", drv.root)[:65536] == b"\xbb" * 65536
    assert sorted(p.name for p in snap.iterdir()) == ["0", "1", "2"]
    ok(snap_image(drv, "snap_revert", src, 0, "qcow2"))
    assert raw_bytes(snap / "2", drv.root)[:65536] == b"\xaa" * 65536


@pytest.mark.timeout(60)
def test_snap_flatten_qcow2(drv):
    src = qcow2_with_snapshots(drv)
    ok(snap_image(drv, "snap_flatten", src, 1, "qcow2"))
    info = qemu_info(src)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert raw_bytes(src, drv.root)[:65536] == b"\xbb" * 65536
    assert drv.base_files() == [src.name]


@pytest.mark.timeout(60)
def test_snap_delete_qcow2_missing(drv):
    src = qcow2_with_snapshots(drv)
    failed(snap_image(drv, "snap_delete", src, 9, "qcow2"), "Snapshot 9 does not exist")
    ok(snap_image(drv, "snap_delete", src, 2, "qcow2"))
    assert sorted(p.name for p in Path(f"{src}.snap").iterdir()) == ["0", "1"]


# -------------------------------------------------------------- progress --
# Long steps report "INFO: <tool>: progress <done> <total>" (common/progress_run.py),
# which the daemon's runner reads live (tests/e2e/test_progress.py).

PROGRESS_RUN = ROOT / "drivers" / "datastore" / "common" / "progress_run.py"
PROGRESS_RE = re.compile(r"^INFO: (\S+): progress (\d+) (\d+)$")


def progress_lines(err: str) -> list[tuple[str, int, int]]:
    return [(m[1], int(m[2]), int(m[3])) for m in map(PROGRESS_RE.match, err.splitlines()) if m]


def run_progress(tmp: Path, total: int, watch: str, *cmd: str) -> tuple[int, str, str]:
    """progress_run.py as libfs.sh's run_progress calls it: fd 3 = the driver's stderr
    (captured in a file here), the command's output on stdout and stderr."""
    report = tmp / "fd3"
    script = f'exec "$@" 3>"{report}"'
    proc = subprocess.run(["bash", "-c", script, "-", sys.executable, str(PROGRESS_RUN),
                           str(total), watch, "--", *cmd], capture_output=True, timeout=30)
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode(), report.read_text()


@pytest.mark.timeout(60)
def test_progress_of_qemu_img_percentages(tmp_path):
    fake = tmp_path / "qemu-img"   # what qemu-img convert -p writes, slowly
    fake.write_text("#!/bin/sh\nprintf '    (0.00/100%%)\\r'; sleep 0.3\n"
                    "printf '    (50.00/100%%)\\r'; sleep 1.7\n"
                    "printf '    (100.00/100%%)\\r'; echo 'a warning' >&2\n")
    fake.chmod(0o755)
    rc, output, report = run_progress(tmp_path, 1000, "qemu", str(fake), "convert", "-p")
    assert (rc, output) == (0, "a warning\n")   # the percentages are read, not passed on
    lines = progress_lines(report)
    assert report.count("\n") == len(lines) and {(n, t) for n, _, t in lines} == {
        ("qemu-img", 1000)}
    dones = [d for _, d, _ in lines]
    assert dones[-1] == 1000 and dones == sorted(dones) and 500 in dones, report


@pytest.mark.timeout(60)
def test_progress_of_a_growing_file_and_a_failure(tmp_path):
    out = tmp_path / "grows"
    writer = ("import sys, time\nwith open(sys.argv[1], 'wb', buffering=0) as f:\n"
              "    for _ in range(6):\n        f.write(bytes(1 << 20)); time.sleep(0.3)\n")
    rc, output, report = run_progress(tmp_path, 6 * MiB, str(out), sys.executable, "-c",
                                      writer, str(out))
    assert (rc, output) == (0, "")
    dones = [d for _, d, _ in progress_lines(report)]
    assert dones[-1] == 6 * MiB and dones == sorted(dones) and 0 < dones[0] < 6 * MiB, report
    # a failing command: its exit status and its text (for the error), no last line
    rc, output, report = run_progress(tmp_path, 10, str(out), "sh", "-c", "echo bad >&2; exit 3")
    assert (rc, output, report) == (3, "bad\n", "")
    rc, output, report = run_progress(tmp_path, 10, str(out), str(tmp_path / "nothing"))
    assert (rc, output, report) == (127, f"{tmp_path / 'nothing'}: No such file or directory\n", "")


@pytest.mark.timeout(60)
def test_clone_and_mkfs_report_progress(drv):
    src = put_image(drv, "d" * 32)
    res = ok(drv.run("clone", {"PATH": str(src), "FORMAT": "raw"}))
    assert progress_lines(res.err)[-1] == ("cp", 4 * MiB, 4 * MiB)
    res = ok(drv.run("clone", {"PATH": str(src), "FORMAT": "raw"},
                     ds_template={"DRIVER": "qcow2"}))
    assert progress_lines(res.err)[-1] == ("qemu-img", 4 * MiB, 4 * MiB)
    res = ok(mkfs(drv, 32, "qcow2", "ext4"))
    (mkfs_tool, written, unknown), converted = progress_lines(res.err)
    assert (mkfs_tool, unknown) == ("mkfs", 0) and 0 < written < 32 * MiB
    assert converted == ("qemu-img", 32 * MiB, 32 * MiB)
    # a failing step still ends with its one error line (Driver.run checks it)
    if shutil.which("mkfs.xfs") is None:
        return
    res = failed(mkfs(drv, 10, "raw", "xfs"), "Error creating xfs file system: ")
    assert "too small" in res.error


@pytest.mark.timeout(60)
def test_cp_conversion_reports_progress(drv):
    src = drv.inp / "disk.raw"
    sparse_raw(src, size=4 * MiB, data_at=MiB)
    res = drv.cp(src, ds_template={"DRIVER": "qcow2"})
    cp_result(drv, res)
    assert progress_lines(res.err)[-1] == ("qemu-img", 4 * MiB, 4 * MiB)
