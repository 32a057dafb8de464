#!/usr/bin/env python3
"""Read an image source for the fs driver: what is checked is what is read.

Usage:
    image_source.py copy SRC DST [OPTIONS]   import SRC into the new file DST
    image_source.py size SRC [OPTIONS]       print the virtual size of SRC in bytes
    image_source.py probe FILE               print "FORMAT\\0VSIZE\\0BACKING\\0" by magic
                                             (the stand-in for qemu-img info when absent)
Options:
    --safe-dirs DIRS --restricted-dirs DIRS  the datastore's SAFE_DIRS / RESTRICTED_DIRS
    --allowed-networks NETS                  the datastore's URL_ALLOWED_NETWORKS
    --md5 X --sha1 X                         expected checksums of the source bytes (copy)
    --no-decompress                          store compressed data as it is (copy)
    --limit RATE                             bytes/s, k/m/g suffixes of 1024 (copy)
    (copy() also takes max_bytes / too_big: the largest file it may write, holes
    included, and the error text when the data go past it; fs_action.py sets them)
Environment:
    HOME                  always restricted (as in OpenNebula's scripts)
    ONED_PROTECTED_PATHS  newline-separated files and directories of the daemon itself
                          (database, journal, configuration, credentials, log,
                          VAR_LOCATION): never readable, whatever SAFE_DIRS says
    ONED_URL_POLICY       "open" (the image owner is an admin) or "restricted" (the
                          default): then only public unicast addresses, or those in
                          URL_ALLOWED_NETWORKS, may be reached, on every connection
    ONED_STAGED_FILE      an upload's staged file (under the protected staging directory):
                          this one file may be read, and is moved rather than copied
                          when it can be (same file system, no checksum/decompression)
    ONED_STALL_TIMEOUT    seconds without a byte before a transfer fails (60; 0 = never)
    FS_STAT_REMOTE_TIMEOUT  seconds for a size measurement that needs a full transfer (75)
    TMPDIR                where size probes keep their temporary files
    http_proxy, https_proxy, no_proxy   as curl; through a proxy (which resolves the
                          name itself) every address of the target must pass the policy

Why a helper: the shell scripts used to resolve a local path, check it, and then read
the path again with several tools, so a user who can write in a SAFE_DIRS folder could
swap a directory for a symlink in between.  Here the source is opened once (O_NONBLOCK:
a FIFO cannot block it; O_NOCTTY), the real path of the open descriptor
(/proc/self/fd/N) is what is checked, and every read (checksum, compression magic,
decompression, the copy, qemu-img on /proc/self/fd/N) uses that descriptor.  URLs are
fetched here too, so one address policy and one stall timeout cover every connection,
each redirect hop included (at most 10, http/https only), and the connection goes to
the very address that was checked (no second name lookup).

Exit status 0 on success; 1 with ONE error line on stderr (the driver's error text).
Log lines on stderr start with "INFO: " or "DEBUG: "; a copy, download or
decompression reports "INFO: image_source: progress <done> <total>" (bytes of the
source; total 0 when unknown) at most once a second, which the daemon shows as the
image's progress.  Python 3 standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time
import zlib

# Imported when first needed (an action's start-up is part of every image's copy time:
# a local copy needs none of these): the network modules by _load_network(), the
# others where they are used.
http = ipaddress = socket = ssl = urllib = None  # bound by _load_network()


def _load_network() -> None:
    """Import the modules of URL imports (about 30 ms of a start-up otherwise)."""
    global http, ipaddress, socket, ssl, urllib, b64encode, unquote, urljoin, urlsplit
    import http.client
    import ipaddress
    import socket
    import ssl
    import urllib.request
    from base64 import b64encode
    from urllib.parse import unquote, urljoin, urlsplit


def _codec_errors(*more: type) -> tuple[type, ...]:
    """``more`` and the errors of broken compressed data (evaluated by an ``except``
    only when something was raised, so lzma is imported only then)."""
    import lzma
    return (*more, EOFError, zlib.error, lzma.LZMAError)


BLOCK = 1 << 20            # read size
HOLE = 1 << 16             # granularity of holes in copies
COPY_CHUNK = 16 << 20      # one copy_file_range call (progress is reported between them)
WRITEBACK = 8 << 20        # written bytes whose write-back a copy starts as it goes on
ZERO_HOLE = bytes(HOLE)
PROBE_BYTES = 4 << 20      # head of an image read to find its format
MAX_REDIRECTS = 10
FICLONE = 0x40049409
QEMU_PACKAGE = "qemu-utils"
SCRIPT = {"copy": "cp", "size": "stat", "probe": "probe"}


class Fail(Exception):
    """The driver's one-line error text."""


class FetchError(Exception):
    """Why a URL could not be read (curl-like reason, wrapped by the caller)."""


def log(level: str, text: str) -> None:
    sys.stderr.write(f"{level}: {SCRIPT_NAME}: {' '.join(text.split())}\n")
    sys.stderr.flush()


SCRIPT_NAME = "image_source"
PROGRESS_EVERY = 1.0


class Meter:
    """Bytes of the source read so far, reported at most every PROGRESS_EVERY seconds."""

    def __init__(self, total: int = 0) -> None:
        self.total, self.done = max(total, 0), 0
        self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.reach(self.done + n)

    def reach(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            log("INFO", f"progress {self.done} {self.total}")


# ------------------------------------------------------------ local paths --

def _under(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") or "/"
    return directory == "/" or path == directory or path.startswith(directory + "/")


class Rules:
    """SAFE_DIRS / RESTRICTED_DIRS / $HOME / the daemon's own files, resolved once."""

    def __init__(self, safe: str, restricted: str) -> None:
        def resolved(words):
            return [(w, os.path.realpath(w)) for w in words if w.startswith("/")]
        self.safe = resolved(safe.split())
        self.restricted = resolved(restricted.split() + [os.environ.get("HOME") or ""])
        self.protected = resolved(
            p for p in os.environ.get("ONED_PROTECTED_PATHS", "").split("\n") if p)
        staged = os.environ.get("ONED_STAGED_FILE", "")
        self.staged = os.path.realpath(staged) if staged.startswith("/") else None

    def check(self, real: str) -> None:
        if self.staged is not None and real == self.staged:
            return   # this action's upload, and nothing else of the daemon's
        for shown, d in self.protected:
            if _under(real, d) or _under(real, shown):
                raise Fail(f"Not allowed to copy image file {real} (a file of oned-images "
                           f"itself: {shown} is protected)")
        if any(_under(real, d) for _, d in self.safe):
            return
        for shown, d in self.restricted:
            if _under(real, d):
                raise Fail(f"Not allowed to copy image file {real} (inside restricted "
                           f"directory {shown} and not inside SAFE_DIRS)")


def _reason(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "Dangling symbolic link" if os.path.lexists(path) else "No such file or directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "Permission denied"
    return exc.strerror or str(exc)


def open_checked(path: str, rules: Rules, error, allow_dir: bool = False):
    """Open ``path`` once and check the real path of the descriptor: (fd, real, stat).

    ``error(reason)`` builds the access error text of the calling action.  The path
    is checked before opening too (so a refused file is never opened, and a missing
    restricted one is refused rather than reported missing), but only the check of
    the open descriptor is authoritative.
    """
    rules.check(os.path.realpath(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise Fail(error(_reason(path, exc))) from None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        rules.check(real)
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)
                or (allow_dir and stat.S_ISDIR(st.st_mode))):
            raise Fail(error("Not a regular file"))
        if not stat.S_ISDIR(st.st_mode):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, real, st


def fd_size(fd: int, st: os.stat_result) -> int:
    return os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size


def dir_size(fd: int) -> int:
    """Apparent size of a directory tree (du -sb), walked from the open descriptor
    without following symlinks."""
    total = os.fstat(fd).st_size
    for _, dirs, files, dfd in os.fwalk(".", dir_fd=fd):
        for name in dirs + files:
            try:
                total += os.stat(name, dir_fd=dfd, follow_symlinks=False).st_size
            except OSError:
                continue
    return total


# --------------------------------------------------------------- formats --

COMPRESSION = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


def compression_of(head: bytes) -> str:
    for magic, name in COMPRESSION:
        if head.startswith(magic):
            return name
    return ""


def decompressor(kind: str):
    if kind == "gzip":
        return zlib.decompressobj(wbits=47)
    if kind == "bzip2":
        import bz2
        return bz2.BZ2Decompressor()
    import lzma
    return lzma.LZMADecompressor()


def decompressed(kind: str, chunks):
    """Decompress an iterator of compressed chunks (concatenated members or streams
    too, as gzip -d and xz -d do); raises EOFError on a truncated stream."""
    dec, fed = decompressor(kind), False
    for data in chunks:
        while data:
            fed = True
            out = dec.decompress(data, BLOCK)
            data = dec.unconsumed_tail if kind == "gzip" else b""
            while out:
                yield out
                if kind == "gzip" or dec.eof or dec.needs_input:
                    break
                out = dec.decompress(b"", BLOCK)
            if dec.eof:
                data = dec.unused_data + data
                dec, fed = decompressor(kind), False
    if fed:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")


def magic_format(head: bytes) -> str:
    """The format qemu-img would probe, from the first bytes; "raw" for anything else."""
    checks = (
        (0, b"QFI\xfb", "qcow2"), (0, b"QED\x00", "qed"), (0, b"KDMV", "vmdk"),
        (0, b"COWD", "vmdk"), (0, b"# Disk DescriptorFile", "vmdk"),
        (0, b"vhdxfile", "vhdx"), (0, b"conectix", "vpc"), (0, b"LUKS\xba\xbe", "luks"),
        (0, b"WithoutFreeSpace", "parallels"), (0, b"WithouFreSpacExt", "parallels"),
        (0, b"Bochs Virtual HD Image", "bochs"), (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
        (64, b"\x7f\x10\xda\xbe", "vdi"),
    )
    for offset, magic, name in checks:
        if head[offset:offset + len(magic)] == magic:
            return "qcow" if name == "qcow2" and head[4:8] == b"\0\0\0\x01" else name
    return "raw"


def which(cmd: str) -> str | None:
    """shutil.which for a command name (shutil's import pulls re, bz2 and lzma: ~6 ms of
    every action's start-up)."""
    for directory in os.get_exec_path():
        path = os.path.join(directory, cmd)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def need_qemu(fmt: str) -> Fail:
    return Fail(f"qemu-img is required to import {fmt} images (install Debian package "
                f"{QEMU_PACKAGE})")


def qemu_info(path: str, pass_fds: tuple[int, ...] = ()) -> dict:
    """qemu-img info (memory and CPU bounded: the image is untrusted); FetchError if
    qemu-img cannot read it."""
    import json
    import subprocess
    cmd = ["qemu-img", "info", "-U", "--output=json", "--", path]
    if which("prlimit"):
        cmd = ["prlimit", "--as=2147483648", "--cpu=60", "--", *cmd]
    res = subprocess.run(cmd, capture_output=True, pass_fds=pass_fds, check=False)
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.decode(errors="replace").splitlines()
                 if ln.strip()]
        raise FetchError("; ".join(lines[:3]) or f"qemu-img exit code {res.returncode}")
    try:
        info = json.loads(res.stdout)
        return {"format": info["format"], "virtual-size": int(info["virtual-size"]),
                "backing-filename": info.get("backing-filename", ""),
                "format-specific": info.get("format-specific") or {}}
    except (ValueError, KeyError, TypeError):
        raise FetchError("cannot parse the output of qemu-img info") from None


def plain_raw(head: bytes) -> bool:
    """True when no format qemu-img probes can claim a file that starts with ``head``
    (its first 4 KiB at least): qemu-img would call it raw, of its own size, referring
    to no other file.  Every probe but vmdk's text descriptor looks for a magic
    (magic_format); that one accepts '#' comment lines, blank lines of spaces and
    "version=N", so a head starting with '#', ' ' or 'v' is left to qemu-img.  (dmg's
    probe wants a name ending in .dmg: never the names probed here.)  A file stored as
    raw is opened as raw explicitly later, so what this calls raw cannot make qemu
    read another file."""
    return magic_format(head) == "raw" and head[:1] not in (b"#", b" ", b"v")


def probe(path: str, size: int, head: bytes, pass_fds: tuple[int, ...] = ()) -> dict:
    """Format and virtual size: raw at once for a plain_raw head; else qemu-img when
    installed, else magic (raw only)."""
    raw = {"format": "raw", "virtual-size": size, "backing-filename": "",
           "format-specific": {}}
    if plain_raw(head):
        return raw
    if which("qemu-img"):
        return qemu_info(path, pass_fds)
    fmt = magic_format(head)
    if fmt != "raw":
        raise need_qemu(fmt)
    return raw


def probe_bytes(head: bytes) -> dict:
    """Probe an image from its first bytes only (a head written to TMPDIR)."""
    if plain_raw(head):
        return probe("", len(head), head)
    import tempfile
    with tempfile.NamedTemporaryFile(prefix="one-ds-head-") as tmp:
        tmp.write(head)
        tmp.flush()
        return probe(tmp.name, len(head), head)


def head_of(kind: str, data: bytes, limit: int = PROBE_BYTES) -> bytes:
    """The first ``limit`` decompressed bytes of a (partial) compressed stream."""
    if not kind:
        return data[:limit]
    dec, out = decompressor(kind), bytearray()
    try:
        if kind == "gzip":
            out += dec.decompress(data, limit)
        else:
            while data and len(out) < limit and not dec.eof:
                out += dec.decompress(data, limit - len(out))
                data = b""
    except _codec_errors(OSError):
        pass
    return bytes(out[:limit])


# ---------------------------------------------------------------- network --

def _networks(text: str) -> list:
    nets = []
    for word in text.replace(",", " ").split():
        try:
            nets.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise Fail(f"Invalid URL_ALLOWED_NETWORKS entry '{word}' (expected addresses "
                       "or networks such as 10.1.0.0/16)") from None
    return nets


class Policy:
    """Which addresses a URL import may connect to (see the module docstring)."""

    def __init__(self, allowed: str) -> None:
        _load_network()
        self.restricted = os.environ.get("ONED_URL_POLICY", "restricted") != "open"
        self.allowed = _networks(allowed)

    def _listed(self, ip) -> bool:
        return any(ip.version == n.version and ip in n for n in self.allowed)

    def refusal(self, ip, local: bool = False) -> str | None:
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        if not self.restricted or self._listed(ip):
            return None
        if local:
            kind = "an address of this host"
        elif ip.is_global and not ip.is_multicast:
            return None
        else:
            kind = ("a loopback" if ip.is_loopback else "a link-local" if ip.is_link_local
                    else "a multicast" if ip.is_multicast else "an unspecified"
                    if ip.is_unspecified else "a private" if ip.is_private else "a reserved")
            kind += " address"
        return (f"address {ip} is not allowed by the URL import policy: {kind}; only "
                "oneadmin's images, or the networks in the datastore's URL_ALLOWED_NETWORKS, "
                "may reach it")


def stall_timeout() -> float | None:
    try:
        secs = float(os.environ.get("ONED_STALL_TIMEOUT", "60"))
    except ValueError:
        secs = 60.0
    return secs if secs > 0 else None


class Fetcher:
    """GET over http/https with certificate verification, the address policy on every
    connection and redirect hop, and a stall timeout on every socket operation."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.stall = stall_timeout()
        self.context = ssl.create_default_context()

    def _stalled(self) -> FetchError:
        return FetchError(f"no data received for {self.stall:g} seconds")

    def _connect(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            raise FetchError(f"Could not resolve host: {host}") from None
        refused = failure = None
        for family, kind, proto, _, addr in infos:
            ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
            why = self.policy.refusal(ip)
            if why:
                refused = refused or why
                continue
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.stall or 60)
            try:
                sock.connect(addr)
                # the peer is this host when the kernel picked the same address for us
                if sock.getsockname()[0] == sock.getpeername()[0]:
                    why = self.policy.refusal(ip, local=True)
                    if why:
                        refused = refused or why
                        sock.close()
                        continue
                sock.settimeout(self.stall)
                if scheme == "https":
                    sock = self.context.wrap_socket(sock, server_hostname=host)
            except TimeoutError:
                sock.close()
                failure = failure or self._stalled()
                continue
            except ssl.SSLError as exc:
                sock.close()
                failure = failure or FetchError(f"SSL error: {exc.reason or exc}")
                continue
            except OSError as exc:
                sock.close()
                failure = failure or FetchError(
                    f"Failed to connect to {host} port {port}: {exc.strerror or exc}")
                continue
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(host, port)
            conn.sock = sock
            return conn
        if refused:
            raise FetchError(refused)
        raise failure or FetchError(f"Could not resolve host: {host}")

    def _proxy(self, scheme: str, host: str) -> tuple[str, int] | None:
        """The http(s)_proxy of the environment for ``host`` (no_proxy honoured)."""
        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get(scheme)
        if not proxy or urllib.request.proxy_bypass_environment(host, proxies):
            return None
        parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return (parts.hostname, parts.port or 80) if parts.hostname else None

    def _via_proxy(self, scheme: str, host: str, port: int,
                   proxy: tuple[str, int]) -> http.client.HTTPConnection:
        """A connection through the operator's proxy (trusted; it resolves the name
        itself, so every address the name has here must pass the policy)."""
        if self.policy.restricted:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError):
                raise FetchError(f"Could not resolve host: {host} (the URL import policy "
                                 "needs its address)") from None
            for info in infos:
                why = self.policy.refusal(ipaddress.ip_address(info[4][0].split("%", 1)[0]))
                if why:
                    raise FetchError(why)
        timeout = self.stall or 60
        if scheme == "https":
            conn = http.client.HTTPSConnection(*proxy, timeout=timeout, context=self.context)
            conn.set_tunnel(host, port)
        else:
            conn = http.client.HTTPConnection(*proxy, timeout=timeout)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise self._stalled() from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise FetchError(f"Failed to connect to proxy {proxy[0]} port {proxy[1]}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        return conn

    def get(self, url: str, first: int | None = None) -> http.client.HTTPResponse:
        """The response (200 or 206) to a GET of ``url`` (``first`` bytes when given)."""
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise FetchError(f"Protocol \"{parts.scheme}\" not supported ({url})")
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                raise FetchError(f"Bad port in URL {url}") from None
            if not parts.hostname:
                raise FetchError(f"No host in URL {url}")
            headers = {"User-Agent": "oned-images-fs", "Accept": "*/*",
                       "Accept-Encoding": "identity"}
            if first:
                headers["Range"] = f"bytes=0-{first - 1}"
            if parts.username is not None:
                cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                headers["Authorization"] = "Basic " + b64encode(cred.encode()).decode()
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            proxy = self._proxy(parts.scheme, parts.hostname)
            if proxy is None:
                conn = self._connect(parts.scheme, parts.hostname, port)
            else:
                conn = self._via_proxy(parts.scheme, parts.hostname, port, proxy)
                if parts.scheme == "http":
                    headers["Host"] = parts.netloc.rsplit("@", 1)[-1]
                    target = f"http://{headers['Host']}{target}"
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except TimeoutError:
                conn.close()
                raise self._stalled() from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise FetchError(f"Error reading the reply of {parts.hostname}: {exc}") from None
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                conn.close()
                if not location:
                    raise FetchError(f"redirect ({resp.status}) without a Location")
                url = urljoin(url, location.strip())
                continue
            if resp.status >= 400:
                conn.close()
                raise FetchError(f"The requested URL returned error: {resp.status}")
            if resp.status not in (200, 206):
                conn.close()
                raise FetchError(f"unexpected HTTP status {resp.status}")
            return resp
        raise FetchError(f"Maximum ({MAX_REDIRECTS}) redirects followed")


class Body:
    """A response body as a raw stream: stall timeout, rate limit, checksums."""

    def __init__(self, fetcher: Fetcher, resp, hashes=(), rate: int = 0) -> None:
        self.fetcher, self.resp, self.hashes, self.rate = fetcher, resp, hashes, rate
        self.count = 0
        self.started = time.monotonic()
        length = resp.getheader("Content-Length") if hasattr(resp, "getheader") else None
        self.meter = Meter(int(length) if length and length.isdigit() else 0)

    def read(self, n: int = BLOCK) -> bytes:
        try:
            data = self.resp.read1(n) if hasattr(self.resp, "read1") else self.resp.read(n)
        except TimeoutError:
            raise self.fetcher._stalled() from None
        except http.client.IncompleteRead as exc:
            raise FetchError(f"transfer closed with {exc.expected} bytes remaining to "
                             "read") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"Error receiving data: {exc}") from None
        self._account(data)
        return data

    def _account(self, data: bytes) -> None:
        self.count += len(data)
        self.meter.add(len(data))
        for h in self.hashes:
            h.update(data)
        if self.rate:
            ahead = self.count / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)

    def close(self) -> None:
        self.resp.close()


class FileBody(Body):
    """A local descriptor read from its start: checksums; positional reads."""

    def __init__(self, fd: int, hashes=(), rate: int = 0, total: int = 0) -> None:
        self.fd, self.hashes, self.rate, self.count = fd, hashes, rate, 0
        self.started = time.monotonic()
        self.meter = Meter(total)

    def read(self, n: int = BLOCK) -> bytes:
        data = os.pread(self.fd, n, self.count)
        self._account(data)
        return data

    def close(self) -> None:
        os.close(self.fd)


# ------------------------------------------------------------------ copy --

class SparseWriter:
    """Writes a stream into ``fd`` leaving holes where whole HOLE blocks are zero.

    ``limit`` (bytes, None = none) bounds the file's size, holes included: a stream
    (decompression, download) that would go past it raises Fail(``too_big``) before
    writing, so a decompression bomb stops at the limit even when its data are zeros
    that take no disk space here (they would as soon as the image is copied on)."""

    def __init__(self, fd: int, limit: int | None = None, too_big: str = "") -> None:
        self.fd = fd
        self.pos = 0
        self.limit, self.too_big = limit, too_big
        #: bytes before this offset are being written back (write_back)
        self.flushed = 0

    def check(self, size: int) -> None:
        """Fail(too_big) when a file of ``size`` bytes would exceed the limit."""
        if self.limit is not None and size > self.limit:
            raise Fail(self.too_big)

    def write(self, data: bytes) -> None:
        # (bytes slices compare with memcmp; memoryview comparison is item by item)
        view, start, n = memoryview(data), 0, len(data)
        self.check(self.pos + n)

        def zero(a: int, b: int) -> bool:
            return data[a:b] == (ZERO_HOLE if b - a == HOLE else bytes(b - a))
        while start < n:
            end = min(start + HOLE, n)
            if zero(start, end):
                start = end
                continue
            run_end = end
            while run_end < n and not zero(run_end, min(run_end + HOLE, n)):
                run_end = min(run_end + HOLE, n)
            chunk = view[start:run_end]
            off = self.pos + start
            while chunk:
                written = os.pwrite(self.fd, chunk, off)
                chunk, off = chunk[written:], off + written
            start = run_end
        self.pos += n
        self.write_back(self.pos)

    def write_back(self, end: int) -> None:
        """Start the disk writes of what was written up to ``end``, without waiting
        for them, once WRITEBACK bytes are due: the disk writes while the copy goes on,
        and finish()'s fsync waits for the last few MiB instead of the whole image
        (100 MiB on ext4: copy and fsync 100 ms -> 60 ms).  Linux starts the
        write-back of a range's dirty pages for POSIX_FADV_DONTNEED (and drops its
        clean pages: a copy does not fill the page cache with the image); elsewhere
        it is only a hint.  The fsync at the end is what makes the copy durable."""
        if end - self.flushed < WRITEBACK:
            return
        try:
            os.posix_fadvise(self.fd, self.flushed, end - self.flushed,
                             os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass
        self.flushed = end

    def finish(self) -> None:
        os.ftruncate(self.fd, self.pos)
        os.fsync(self.fd)


def _reflink(src: int, dst: int) -> bool:
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError:
        return False
    os.fsync(dst)
    return True


def _move(src: str, dst: str) -> bool:
    """rename() an upload's staged file onto ``dst`` (False: another file system).
    The staged file is the daemon's (mode 0600): the image gets the usual mode."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(dst, 0o666 & ~mask)
    return True


def _copy_fd_kernel(src: int, size: int, out: SparseWriter, meter: Meter) -> bool:
    """Copy a file with no holes by copy_file_range (no pass through user space; a
    server-side copy or a reflink where the file system offers one), as coreutils cp
    copies files that are not sparse.  False when the kernel cannot copy between these
    two files (nothing written then): the caller reads and writes instead."""
    pos = 0
    while pos < size:
        try:
            n = os.copy_file_range(src, out.fd, min(COPY_CHUNK, size - pos), pos, pos)
        except OSError as exc:
            if pos == 0 and exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                          errno.EOPNOTSUPP, errno.EBADF):
                return False
            raise
        if n == 0:      # the file shrank: it ends here
            break
        pos += n
        out.write_back(pos)
        meter.reach(pos)
    out.pos = pos
    return True


def _copy_fd_sparse(src: int, size: int, out: SparseWriter, meter: Meter | None = None) -> None:
    """Copy a regular file, skipping its holes (SEEK_DATA) and zero blocks."""
    pos = 0
    while pos < size:
        try:
            data_at = os.lseek(src, pos, os.SEEK_DATA)
            hole_at = os.lseek(src, data_at, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:   # only a hole up to the end
                break
            data_at, hole_at = pos, size   # no SEEK_DATA here: read it all
        if data_at > pos:
            out.pos = data_at
            pos = data_at
        while pos < min(hole_at, size):
            data = os.pread(src, min(BLOCK, hole_at - pos), pos)
            if not data:
                return
            out.write(data)
            pos += len(data)
            if meter is not None:
                meter.reach(pos)
    out.pos = max(out.pos, size)


def _rate(text: str) -> int:
    if not text:
        return 0
    unit = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1].lower(), 1)
    return int(text.rstrip("kKmMgG")) * unit


def _hash(name: str):
    import hashlib
    return hashlib.new(name)


def copy(src: str, dst: str, opts: dict) -> None:
    rules = Rules(opts["safe_dirs"], opts["restricted_dirs"])
    wanted = [(name, value.replace(" ", "").lower(), _hash(name))
              for name, value in (("md5", opts["md5"]), ("sha1", opts["sha1"])) if value.strip()]
    hashes = [h for _, _, h in wanted]
    remote = src.startswith(("http://", "https://"))
    fd = st = None
    try:
        if remote:
            fetcher = Fetcher(Policy(opts["allowed_networks"]))
            body = Body(fetcher, fetcher.get(src), hashes, _rate(opts["limit"]))
        else:
            fd, real, st = open_checked(src, rules,
                                        lambda why: f"Cannot read image file {src} ({why})")
            log("INFO", f"Copying {real} into {dst}")
            body = FileBody(fd, hashes, _rate(opts["limit"]), fd_size(fd, st))
            if real == rules.staged:
                opts = {**opts, "staged": real, "dst": dst}
    except FetchError as exc:
        raise Fail(f"Error downloading {src}: {exc}") from None
    try:
        out_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        body.close()
        raise Fail(f"Error copying image file {src}: {exc.strerror}") from None
    try:
        _copy_body(src, body, out_fd, fd, st, opts, wanted)
    finally:
        body.close()
        os.close(out_fd)


def _copy_body(src, body, out_fd, fd, st, opts, wanted) -> None:
    out = SparseWriter(out_fd, opts.get("max_bytes"), opts.get("too_big", ""))
    try:
        first = body.read(BLOCK)
        kind = "" if opts["no_decompress"] else compression_of(first)
        chunks = _chunks(first, body)
        if not kind and fd is not None and not wanted and not body.rate \
                and stat.S_ISREG(st.st_mode):
            out.check(st.st_size)
            if opts.get("staged") and _move(opts["staged"], opts["dst"]):
                log("INFO", "moved the uploaded file into the datastore")
                return
            if _reflink(fd, out_fd):
                log("DEBUG", "reflinked")
                return
            if st.st_blocks * 512 < st.st_size or not _copy_fd_kernel(fd, st.st_size, out,
                                                                      body.meter):
                _copy_fd_sparse(fd, st.st_size, out, body.meter)
        elif not kind:
            for data in chunks:
                out.write(data)
        else:
            log("INFO", f"Decompressing {kind} data")
            try:
                for data in decompressed(kind, chunks):
                    out.write(data)
            except _codec_errors(ValueError) as exc:
                for _ in chunks:   # a wrong checksum says more than the broken data
                    pass
                _check_hashes(wanted)
                raise Fail(f"Error decompressing {src}: {kind}: {exc}") from None
        out.finish()
    except FetchError as exc:
        raise Fail(f"Error downloading {src}: {exc}") from None
    except OSError as exc:
        raise Fail(f"Error copying image file {src}: {exc.strerror or exc}") from None
    _check_hashes(wanted)


def _chunks(first: bytes, body: Body):
    data = first
    while data:
        yield data
        data = body.read(BLOCK)


def _check_hashes(wanted) -> None:
    for name, want, h in wanted:
        log("INFO", f"Verifying {name.upper()} checksum")
        if h.hexdigest() != want:
            raise Fail(f"Hash does not match: {name.upper()} expected {want}, "
                       f"got {h.hexdigest()}")


# ------------------------------------------------------------------ size --

class TooBig(Exception):
    """A size measured by expanding the image went past ``opts["most"]`` bytes: the
    measuring stopped there (a decompression bomb is not expanded to its end)."""


def size(src: str, opts: dict) -> int:
    """The virtual size of SRC in bytes; ``opts["most"]`` (bytes, optional): stop with
    TooBig once expanding the image shows it is larger."""
    most = opts.get("most")
    if src.startswith(("http://", "https://")):
        return _remote_size(src, Fetcher(Policy(opts["allowed_networks"])), most)
    rules = Rules(opts["safe_dirs"], opts["restricted_dirs"])
    fd, _, st = open_checked(src, rules, lambda why: f"cannot access '{src}' ({why})",
                             allow_dir=True)
    try:
        if stat.S_ISDIR(st.st_mode):
            return dir_size(fd)
        head = os.pread(fd, PROBE_BYTES, 0)
        kind = compression_of(head)
        try:
            if not kind:
                return probe(f"/proc/self/fd/{fd}", fd_size(fd, st), head,
                             (fd,))["virtual-size"]
            info = _probe_head(kind, head)
        except FetchError as exc:
            raise Fail(f"Cannot determine the size of {src}: {exc}") from None
        if info and info["format"] != "raw":
            return info["virtual-size"]
        if kind == "xz":
            total = _xz_size(fd)
            if total is not None:
                return total
        return _count(src, kind, FileBody(os.dup(fd)), None, most)
    finally:
        os.close(fd)


def _probe_head(kind: str, head: bytes) -> dict | None:
    """Format of a compressed image from its decompressed head; None if unreadable."""
    data = head_of(kind, head)
    try:
        return probe_bytes(data)
    except FetchError:
        return None


def _xz_size(fd: int) -> int | None:
    import subprocess
    if not which("xz"):
        return None
    res = subprocess.run(["xz", "--robot", "-l", f"/proc/self/fd/{fd}"], capture_output=True,
                         pass_fds=(fd,), check=False)
    for line in res.stdout.decode(errors="replace").splitlines():
        fields = line.split("\t")
        if res.returncode == 0 and fields[0] == "totals" and fields[4].isdigit():
            return int(fields[4])
    return None


def _count(src: str, kind: str, body: Body, deadline: float | None,
           most: int | None = None) -> int:
    """Decompressed byte count of the whole stream (nothing stored), or TooBig past
    ``most`` bytes."""
    def timed():
        for data in _chunks(body.read(BLOCK), body):
            if deadline is not None and time.monotonic() > deadline:
                raise FetchError("it takes longer than FS_STAT_REMOTE_TIMEOUT "
                                 f"({os.environ.get('FS_STAT_REMOTE_TIMEOUT', '75')} s)")
            yield data
    try:
        total = 0
        for data in (decompressed(kind, timed()) if kind else timed()):
            total += len(data)
            if most is not None and total > most:
                raise TooBig(src)
        return total
    except _codec_errors(FetchError, OSError) as exc:
        raise Fail(f"Cannot determine the size of {src}: {exc}") from None
    finally:
        body.close()


def _remote_size(url: str, fetcher: Fetcher, most: int | None = None) -> int:
    """One ranged GET of the head (no HEAD request, which pre-signed URLs often refuse)
    gives the total and the format; full transfers only when the head cannot tell."""
    try:
        resp = fetcher.get(url, first=PROBE_BYTES)
        body = Body(fetcher, resp)
        total = None
        if resp.status == 206:
            crange = (resp.getheader("Content-Range") or "").rsplit("/", 1)[-1].strip()
            total = int(crange) if crange.isdigit() else None
        elif resp.status == 200:
            clen = (resp.getheader("Content-Length") or "").strip()
            total = int(clen) if clen.isdigit() else None
        head = bytearray()
        while len(head) < PROBE_BYTES:
            data = body.read(PROBE_BYTES - len(head))
            if not data:
                break
            head += data
        body.close()
    except FetchError as exc:
        raise Fail(f"cannot access '{url}' ({exc})") from None
    head = bytes(head)
    kind = compression_of(head)
    limit = float(os.environ.get("FS_STAT_REMOTE_TIMEOUT", "75") or 75)
    info = _probe_head(kind, head)
    if info is not None:
        if info["format"] != "raw":
            return info["virtual-size"]
        if not kind and total is not None:
            return total
        log("INFO", f"Measuring {url} by streaming it (at most {limit:g}s)")
        try:
            body = Body(fetcher, fetcher.get(url))
        except FetchError as exc:
            raise Fail(f"Cannot determine the size of {url}: {exc}") from None
        return _count(url, kind, body, time.monotonic() + limit, most)
    log("INFO", f"Downloading {url} to read its header (at most {limit:g}s)")
    deadline = time.monotonic() + limit
    import tempfile
    with tempfile.NamedTemporaryFile(prefix="one-ds-image-") as tmp:
        try:
            body = Body(fetcher, fetcher.get(url))
            out = SparseWriter(tmp.fileno())
            chunks = _chunks(body.read(BLOCK), body)
            written = 0
            for data in (decompressed(kind, chunks) if kind else chunks):
                if time.monotonic() > deadline:
                    raise FetchError(f"it takes longer than FS_STAT_REMOTE_TIMEOUT ({limit:g} s)")
                written += len(data)
                if most is not None and written > most:
                    raise TooBig(url)  # (the image these bytes hold is about as large)
                out.write(data)
            body.close()
            out.finish()
            return qemu_info(tmp.name)["virtual-size"]
        except _codec_errors(FetchError, OSError) as exc:
            raise Fail(f"Cannot determine the size of {url}: {exc}") from None


# ------------------------------------------------------------------- cli --

def _probe_file(path: str) -> str:
    with open(path, "rb") as fh:
        head = fh.read(PROBE_BYTES)
        length = os.fstat(fh.fileno()).st_size
    info = probe(path, length, head)
    return f"{info['format']}\0{info['virtual-size']}\0{info['backing-filename']}\0"


def _options(args: list[str]) -> tuple[list[str], dict]:
    opts = {"safe_dirs": "", "restricted_dirs": "", "allowed_networks": "", "md5": "",
            "sha1": "", "limit": "", "no_decompress": False}
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--no-decompress":
            opts["no_decompress"] = True
        elif arg.startswith("--") and arg[2:].replace("-", "_") in opts:
            opts[arg[2:].replace("-", "_")] = next(it, "")
        else:
            rest.append(arg)
    return rest, opts


def main(argv: list[str]) -> int:
    global SCRIPT_NAME
    if not argv or argv[0] not in SCRIPT:
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    SCRIPT_NAME = SCRIPT[argv[0]]
    args, opts = _options(argv[1:])
    try:
        if argv[0] == "copy" and len(args) == 2:
            copy(args[0], args[1], opts)
        elif argv[0] == "size" and len(args) == 1:
            print(size(args[0], opts))
        elif argv[0] == "probe" and len(args) == 1:
            sys.stdout.write(_probe_file(args[0]))
        else:
            raise Fail(f"Internal error: bad arguments for image_source.py {argv[0]}")
    except Fail as exc:
        sys.stderr.write(" ".join(str(exc).split()) + "\n")
        return 1
    except FetchError as exc:
        sys.stderr.write(" ".join(str(exc).split()) + "\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback: it becomes the image's ERROR
        sys.stderr.write(f"{SCRIPT_NAME} failed: unexpected error: "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
