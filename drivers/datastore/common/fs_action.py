#!/usr/bin/env python3
"""The fs driver's ``stat``, ``cp``, ``mkfs`` and ``monitor`` actions, each in one
Python process.

Usage (drivers/datastore/fs/stat, cp, mkfs and monitor are Python scripts that import
this module and call run_script(); an imported module's byte code is cached in
__pycache__, a script's is compiled at every start, about 3 ms of this one):
    fs_action.py ACTION <id>             DS_DRIVER_ACTION_DATA (base64) on stdin
    fs_action.py ACTION - <id>           the same (OpenNebula 6.6.2+ form)
    fs_action.py ACTION <base64> <id>    the document in argv (<= 6.6.1 form)

The contract, error texts and log lines are those of common/libfs.sh (see its header):
result on stdout, failure as one plain line on stderr with exit status 1, partial files
removed, "<action> interrupted by signal TERM" when killed.

Why Python rather than bash: an image's copy time is mostly start-up.  The bash
versions ran about ten programs per action (three Python interpreters among them:
the document reader, image_source.py and a JSON reader of qemu-img's output);
this runs one interpreter (started with -I -S by the scripts), reads the document
with expat (pyexpat itself: the xml packages around it cost 1 ms to import), and calls image_source.py's functions in-process, so every check there
(the open-once descriptor check, protected paths, the URL policy) is the same code.
qemu-img runs once per action, on the file the action stores or measures.
Python 3 standard library only.
"""

from __future__ import annotations

import os
import sys

# _signal, the C module under signal: signal's enums cost 3 ms of a 20 ms start-up
from _signal import SIG_IGN, SIGHUP, SIGINT, SIGTERM
from _signal import signal as set_handler
from binascii import Error as Base64Error
from binascii import a2b_base64

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import image_source as src_mod  # noqa: E402
from image_source import Fail, FetchError, log  # noqa: E402

USAGE = "Usage: {name} <id> (base64 DS_DRIVER_ACTION_DATA on stdin)"
QEMU_NEEDED = "qemu-img is required to {what} (install Debian package qemu-utils)"
MAX_ERROR = 500
#: bytes of a stored file that image_source.plain_raw looks at (its magics end at 72)
HEAD = 4096


class Interrupted(Exception):
    """A signal asked the action to stop (HUP, INT or TERM)."""


# ------------------------------------------------------ driver action data --

def _read_document(argv: list[str], name: str) -> tuple[str, bytes]:
    """(id, document bytes) from the three calling forms (see the module docstring)."""
    if len(argv) == 1:
        return argv[0], sys.stdin.buffer.read()
    if len(argv) == 2:
        if argv[0] == "-":
            return argv[1], sys.stdin.buffer.read()
        return argv[1], argv[0].encode()
    raise Fail(USAGE.format(name=name))


def parse_document(raw: bytes) -> dict[tuple[str, ...], str]:
    """Every element path under the root -> the text of its first occurrence.

    The values drv_action.py gives: an element holding only child elements is "",
    a missing one too (the caller's .get(path, "")).  expat, not ElementTree: the
    action needs a dozen plain paths, and ElementTree's import costs ~10 ms.
    """
    import pyexpat as expat  # what xml.parsers.expat re-exports

    data = raw.strip()
    if not data:
        raise Fail("Empty driver action data (nothing was received on stdin)")
    if not data.startswith(b"<"):
        try:
            data = a2b_base64(b"".join(data.split()), strict_mode=True)
        except (Base64Error, ValueError) as exc:
            raise Fail(f"Cannot decode driver action data (bad base64): {exc}") from None
    values: dict[tuple[str, ...], str] = {}
    stack: list[tuple[str, ...]] = []
    texts: list[list[str]] = []
    children: list[bool] = []

    def start(tag: str, _attrs) -> None:
        if children:
            children[-1] = True
        stack.append((*stack[-1], tag) if stack else ())
        texts.append([])
        children.append(False)

    def end(_tag: str) -> None:
        path, text, nested = stack.pop(), "".join(texts.pop()), children.pop()
        if path not in values:
            values[path] = "" if nested and not text.strip() else text

    def chars(text: str) -> None:
        # the text before an element's first child is its .text (ElementTree's)
        if texts and not children[-1]:
            texts[-1].append(text)

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise Fail(f"Cannot parse driver action data (bad XML): "
                   f"{expat.ErrorString(exc.code)}: line {exc.lineno}, "
                   f"column {exc.offset}") from None
    return values


class Document:
    """Values of DS_DRIVER_ACTION_DATA by relative path ("IMAGE/PATH")."""

    def __init__(self, values: dict[tuple[str, ...], str]) -> None:
        self.values = values

    def __getitem__(self, path: str) -> str:
        return self.values.get(tuple(path.split("/")), "")


# ---------------------------------------------------------------- helpers --

def is_yes(value: str) -> bool:
    return value.lower() in ("yes", "true", "1")


def err_summary(text: str) -> str:
    """libfs.sh's err_summary: the first (at most 3) non-empty lines, "; "-joined, cut
    at 500 characters, stopping at a usage text."""
    out: list[str] = []
    for line in text.replace("\r", "").splitlines():
        line = line.lstrip()
        if not line:
            continue
        if line.startswith(("Usage:", "usage:")) and out:
            break
        out.append(line)
        if len(out) == 3:
            break
    joined = "; ".join(out)
    return joined if len(joined) <= MAX_ERROR else joined[:MAX_ERROR - 3] + "..."


def local_path(src: str) -> str:
    """file:// URLs name a local path; other sources are returned as they are."""
    if not src.startswith("file://"):
        return src
    path = src[len("file://"):]
    if path.startswith("localhost/"):
        path = "/" + path[len("localhost/"):]
    if not path.startswith("/"):
        raise Fail(f"Unsupported image source file://{path} (not a local file)")
    return path


def check_scheme(src: str) -> bool:
    """True for http(s) URLs; other URL schemes are refused (local paths: False)."""
    if src.startswith(("http://", "https://")):
        return True
    if "://" in src:
        raise Fail(f"Unsupported image source {src}")
    return False


def run_tool(argv: list[str]) -> tuple[int, str, str]:
    """Run a tool (argv, never a shell): (exit code, stdout, stderr)."""
    import subprocess
    res = subprocess.run(argv, capture_output=True, check=False)
    return (res.returncode, res.stdout.decode(errors="replace"),
            res.stderr.decode(errors="replace"))


def run_progress(error: str, argv: list[str], total: int, watch: str) -> None:
    """Run a long tool with progress lines on stderr (common/progress_run.py, the same
    lines copies write); Fail(error: its output) when it fails."""
    from progress_run import run_measured

    log("DEBUG", " ".join(argv))
    code, out = run_measured(argv, total, watch, capture=True)
    if code != 0:
        raise Fail(f"{error}: {err_summary(out.decode(errors='replace')) or f'exit code {code}'}")


def image_info(path: str) -> tuple[str, str, str, int]:
    """(format, backing file, external file, virtual size) of a stored file, as image_source.probe
    finds them: raw at once when no format qemu probes could claim it, else qemu-img
    when it is installed (memory and CPU bounded: the image is untrusted), else by
    magic (raw only).  External: a file other than the image that qemu would read (a vmdk extent,
    a qcow2 data file).  Fail("Unknown image format: ...") when qemu-img cannot read it.
    """
    with open(path, "rb") as fh:
        head = fh.read(HEAD)
    try:
        info = src_mod.probe(path, os.path.getsize(path), head)   # need_qemu: non-raw, no qemu-img
    except FetchError as exc:
        raise Fail(f"Unknown image format: {exc}") from None
    image = os.path.realpath(path)
    spec = (info["format-specific"] or {}).get("data") or {}
    refs = [e.get("filename", "") for e in spec.get("extents") or []]
    refs.append(spec.get("data-file") or "")
    home = os.path.dirname(image)
    external = [r for r in refs if r and os.path.realpath(os.path.join(home, r)) != image]
    return (info["format"], info["backing-filename"], (external or [""])[0],
            int(info["virtual-size"] or 0))


# ----------------------------------------------------------------- actions --

def stat_action(doc: Document) -> str:
    """fs/stat: the virtual size in MiB (rounded up) of the image at IMAGE/PATH."""
    src = doc["IMAGE/PATH"]
    if not src:
        raise Fail("Image PATH is empty")
    src = local_path(src)
    check_scheme(src)
    opts = {"safe_dirs": doc["DATASTORE/TEMPLATE/SAFE_DIRS"],
            "restricted_dirs": doc["DATASTORE/TEMPLATE/RESTRICTED_DIRS"],
            "allowed_networks": doc["DATASTORE/TEMPLATE/URL_ALLOWED_NETWORKS"]}
    # An image measured by expanding it (a compressed raw file) is expanded no further
    # than cp would be allowed to write: a decompression bomb is not unpacked to its
    # end to learn its size.  Past the datastore's space, the size reported is one MiB
    # more than that space, so that the daemon refuses it with oned's "Not enough
    # space in datastore" as it would the true size; past DRIVER_COPY_MAX_MB, STAT
    # fails with cp's text.
    limits = _limits(doc)
    if limits:
        mb, why, space = min(limits, key=lambda item: item[0])
        opts["most"] = mb << 20
    try:
        size = src_mod.size(src, opts)
    except src_mod.TooBig:
        if space:
            return str(mb + 1)
        raise Fail(f"Image {src} exceeds {mb} MiB, {why}") from None
    return str((size + 1048575) // 1048576)


def monitor_action(doc: Document) -> str:
    """fs/monitor: USED_MB, FREE_MB and TOTAL_MB of the file system holding BASE_PATH
    (created if missing), as ``df -B1M --output=size,used,avail`` counts them (each
    rounded up to a MiB; used = total - free, free = what non-root users may take)."""
    base = doc["DATASTORE/BASE_PATH"]
    require_base_path(base)
    try:
        st = os.statvfs(base)
    except OSError as exc:
        raise Fail(f"Error monitoring datastore {base}: df: {base}: {exc.strerror}") from None

    def mib(blocks: int) -> int:
        return -(-blocks * st.f_frsize // 1048576)
    return (f"USED_MB={mib(st.f_blocks - st.f_bfree)}\nFREE_MB={mib(st.f_bavail)}\n"
            f"TOTAL_MB={mib(st.f_blocks)}")


def mkfs_action(doc: Document, cleanup: list[str]) -> str:
    """fs/mkfs: an empty IMAGE/SIZE MiB image, IMAGE/FORMAT raw (a sparse file) or
    qcow2, with an optional IMAGE/FS file system; "<SOURCE>".  FORMAT=save_as only
    reserves a name (the TM copies the disk there later)."""
    base, size, fmt = doc["DATASTORE/BASE_PATH"], doc["IMAGE/SIZE"], doc["IMAGE/FORMAT"]
    require_base_path(base)
    dst = new_dst(base)
    fmt = fmt or "raw"
    if fmt == "save_as":
        return dst
    if fmt not in ("raw", "qcow2"):
        raise Fail(f"Unsupported image format {fmt}")
    if not (size.isascii() and size.isdigit() and len(size) <= 12) or int(size) == 0:
        raise Fail(f"Invalid image size '{size}'")
    size = str(int(size))
    fs = doc["IMAGE/FS"].lower()
    # The file is new and sparse (every block reads as zeros): nothing to discard, and
    # a journal left as holes is the zeroed journal mke2fs would write (32 MiB for
    # ext4 at 1 GiB: written, then synced by the page cache, for the same bytes).
    if fs in ("ext2", "ext3", "ext4"):
        tool = ["mkfs", "-t", fs, "-F", "-q", "-E",
                "nodiscard" if fs == "ext2" else "nodiscard,lazy_journal_init=1"]
    elif fs == "xfs":
        tool = ["mkfs.xfs", "-f", "-q", "-K"]
    elif fs:
        raise Fail(f"Unsupported file system type {fs}")
    tmp = dst + ".tmp"
    cleanup += [tmp, tmp + ".conv", dst]
    if fmt != "raw" and src_mod.which("qemu-img") is None:
        raise Fail(QEMU_NEEDED.format(what=f"create {fmt} images"))

    def run(error: str, argv: list[str]) -> None:
        log("DEBUG", " ".join(argv))
        code, out, err = run_tool(argv)
        if code != 0:
            raise Fail(f"{error}: {err_summary(out + err) or f'exit code {code}'}")

    if not fs and fmt == "qcow2":
        log("INFO", f"Creating {size}M {fmt} image {dst}")
        run("Error creating image", ["qemu-img", "create", "-q", "-f", fmt, "--", tmp,
                                     f"{size}M"])
    else:
        log("INFO", f"Creating {size}M {fmt} image {dst}"
                    + (f" with a {fs} file system" if fs else ""))
        try:   # a sparse file: no blocks written
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o666)
            try:
                os.ftruncate(fd, int(size) << 20)
            finally:
                os.close(fd)
        except OSError as exc:
            raise Fail(f"Error creating image: truncate: {exc.strerror}") from None
        if fs:   # progress: what mkfs has written so far (its total is unknown)
            run_progress(f"Error creating {fs} file system", [*tool, "--", tmp], 0,
                         "+" + tmp)
        if fmt == "qcow2":
            run_progress("Error creating image", ["qemu-img", "convert", "-p", "-f", "raw",
                                                  "-O", "qcow2", "--", tmp, tmp + ".conv"],
                         int(size) << 20, "qemu")
            os.replace(tmp + ".conv", tmp)
    os.replace(tmp, dst)
    return dst


def require_base_path(base: str) -> None:
    if not base:
        raise Fail("Datastore BASE_PATH is not set")
    if not base.startswith("/"):
        raise Fail(f"Datastore BASE_PATH must be an absolute path: {base}")
    if any(c.isspace() for c in base):
        raise Fail(f"Datastore BASE_PATH must not contain white space: {base}")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as exc:
        raise Fail(f"Cannot create datastore directory {base}: mkdir: cannot create "
                   f"directory '{exc.filename or base}': {exc.strerror}") from None


def new_dst(base: str) -> str:
    """A new name in BASE_PATH: 32 random hex digits, not used so far."""
    while True:
        dst = f"{base}/{os.urandom(16).hex()}"
        if not os.path.lexists(dst) and not os.path.lexists(dst + ".tmp"):
            return dst


def valid_rate(text: str) -> bool:
    digits = text[:-1] if text and text[-1] in "kKmMgG" else text
    return digits.isascii() and digits.isdigit()


def _mb(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def _limits(doc: Document) -> list[tuple[int, str, bool]]:
    """(MiB, why, the datastore's space) of each bound on what an image may expand to:
    see copy_limit."""
    limits: list[tuple[int, str, bool]] = []
    operator = _mb(os.environ.get("ONED_COPY_MAX_MB", "") or "0") or 0
    if operator > 0:
        limits.append((operator, "the largest copy DRIVER_COPY_MAX_MB allows "
                                 "(oned-images.conf); raise it there and retry", False))
    ds_id = doc["DATASTORE/ID"]
    total, free, used = (_mb(doc[f"DATASTORE/{k}"]) for k in ("TOTAL_MB", "FREE_MB", "USED_MB"))
    checked = os.environ.get("ONED_CAPACITY_CHECK", "YES").upper() != "NO"
    if checked and total and total > 0 and free is not None:
        limits.append((max(free, 0), f"the free space of datastore {ds_id} (FREE_MB); "
                                     "free space there and retry", True))
        cap = _mb(doc["DATASTORE/TEMPLATE/LIMIT_MB"])
        if cap is not None and used is not None and cap - used < free:
            limits.append((max(cap - used, 0),
                           f"what datastore {ds_id} may still use (LIMIT_MB {cap} - USED_MB "
                           f"{used}); raise its LIMIT_MB and retry", True))
    return limits


def copy_limit(doc: Document, src: str) -> tuple[int | None, str]:
    """(bytes, error text): the most a cp may write, holes included (None: no limit).

    Whatever the image's SIZE said at allocate (STAT reads a compressed qcow2's
    virtual size from its header, a URL may serve other bytes to cp than to STAT,
    the capacity check may be off), what the copy expands to may not go past the
    space the document says the datastore has: FREE_MB, or LIMIT_MB - USED_MB when
    that is less (oned's Datastore::get_avail_mb), once monitored (TOTAL_MB > 0) and
    unless the allocate did not check the space (ONED_CAPACITY_CHECK=NO: the
    datastore's DATASTORE_CAPACITY_CHECK is off, or an admin skipped the check); nor
    past the operator's DRIVER_COPY_MAX_MB (ONED_COPY_MAX_MB)."""
    limits = _limits(doc)
    if not limits:
        return None, ""
    mb, why, _ = min(limits, key=lambda item: item[0])
    return mb << 20, f"Image {src} exceeds {mb} MiB, {why}"


def cp_action(doc: Document, cleanup: list[str]) -> str:
    """fs/cp: import IMAGE/PATH into BASE_PATH; "<SOURCE> <FORMAT>"."""
    src = doc["IMAGE/PATH"]
    base = doc["DATASTORE/BASE_PATH"]
    ds_type = doc["DATASTORE/TYPE"]
    driver = doc["DATASTORE/TEMPLATE/DRIVER"]
    no_decompress = doc["IMAGE/TEMPLATE/NO_DECOMPRESS"]
    if not src:
        raise Fail("Image PATH is empty")
    require_base_path(base)
    if ds_type == "2" and not no_decompress:   # FILE_DS
        no_decompress = "yes"
    bw = doc["IMAGE/TEMPLATE/LIMIT_TRANSFER_BW"] or doc["DATASTORE/TEMPLATE/LIMIT_TRANSFER_BW"]
    if bw and not valid_rate(bw):
        raise Fail(f"Invalid LIMIT_TRANSFER_BW '{bw}'")

    dst = new_dst(base)
    tmp = dst + ".tmp"
    cleanup += [tmp, tmp + ".conv", dst]
    src = local_path(src)
    max_bytes, too_big = copy_limit(doc, src)
    if check_scheme(src):
        log("INFO", f"Downloading {src} into {dst}")
    if bw:
        log("DEBUG", f"transfer limited to {bw}/s")
    src_mod.copy(src, tmp, {
        "safe_dirs": doc["DATASTORE/TEMPLATE/SAFE_DIRS"],
        "restricted_dirs": doc["DATASTORE/TEMPLATE/RESTRICTED_DIRS"],
        "allowed_networks": doc["DATASTORE/TEMPLATE/URL_ALLOWED_NETWORKS"],
        "md5": doc["IMAGE/TEMPLATE/MD5"], "sha1": doc["IMAGE/TEMPLATE/SHA1"], "limit": bw,
        "no_decompress": is_yes(no_decompress), "max_bytes": max_bytes, "too_big": too_big})

    fmt, backing, external, vsize = image_info(tmp)
    if backing:
        raise Fail(f"Image has a backing file ({backing}), refusing it")
    if external:
        raise Fail(f"Image refers to another file ({external}), refusing it")
    stored = "raw" if fmt == "luks" else fmt
    if (driver in ("raw", "qcow2") and driver != stored and fmt != "luks" and ds_type != "2"
            and doc["IMAGE/TYPE"] != "1"
            and doc["DATASTORE/TEMPLATE/CONVERT"].lower() != "no"):
        if src_mod.which("qemu-img") is None:
            raise Fail(QEMU_NEEDED.format(what=f"convert images to {driver}"))
        if max_bytes is not None and vsize > max_bytes:   # the converted file's size
            raise Fail(too_big)
        log("INFO", f"Converting {stored} image to {driver}")
        run_progress(f"Error converting image to {driver}",
                     ["qemu-img", "convert", "-p", "-f", stored, "-O", driver, "--", tmp,
                      tmp + ".conv"], vsize, "qemu")
        os.replace(tmp + ".conv", tmp)
        stored = driver
    try:
        os.replace(tmp, dst)
    except OSError as exc:
        raise Fail(f"Error copying image file {src}: {exc.strerror}") from None
    return f"{dst} {stored}"


# ---------------------------------------------------------------------- cli --

SIGNALS = {SIGHUP: "HUP", SIGINT: "INT", SIGTERM: "TERM"}
ACTIONS = {"stat": stat_action, "cp": cp_action, "monitor": monitor_action,
           "mkfs": mkfs_action}


def _interrupt(signum: int, _frame) -> None:
    for sig in SIGNALS:
        set_handler(sig, SIG_IGN)
    raise Interrupted(SIGNALS[signum])


def _one_line(text: str, name: str) -> str:
    """libfs.sh's fail(): one line, never one a driver log parser would take for a log
    line or oned would drop (a leading '-')."""
    text = " ".join(text.split())
    if not text:
        return f"{name} failed"
    if text.startswith(("-", "INFO:", "WARN:", "ERROR:", "DEBUG:")):
        return f"Error: {text}"
    return text


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ACTIONS:
        sys.stderr.write("usage: fs_action.py stat|cp|mkfs|monitor <id>\n")
        return 2
    name = argv[0]
    src_mod.SCRIPT_NAME = name
    for sig in SIGNALS:
        set_handler(sig, _interrupt)
    cleanup: list[str] = []
    try:
        try:
            _, raw = _read_document(argv[1:], name)
            doc = Document(parse_document(raw))
            result = (ACTIONS[name](doc, cleanup) if name in ("cp", "mkfs")
                      else ACTIONS[name](doc))
        except Interrupted as exc:
            raise Fail(f"{name} interrupted by signal {exc}") from None
        except (Fail, FetchError):
            raise
        except Exception as exc:  # one line, never a traceback: it becomes the image's ERROR
            raise Fail(f"{name} failed: unexpected error: {type(exc).__name__}: "
                       f"{exc}") from None
    except (Fail, FetchError) as exc:
        for sig in SIGNALS:
            set_handler(sig, SIG_IGN)
        for path in cleanup:
            try:
                os.unlink(path)
            except OSError:
                pass
        sys.stderr.write(_one_line(str(exc), name) + "\n")
        return 1
    sys.stdout.write(result + "\n")
    return 0


def run_script(argv: list[str]) -> None:
    """The entry of the fs/<action> scripts (argv: the action, then the script's own
    arguments) and of this file run as a script; never returns."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # nothing left to clean: skip the interpreter's ~10 ms of teardown


if __name__ == "__main__":
    run_script(sys.argv[1:])
