"""WORKERS = N (oned_images/workers.py): N daemons accept on one port under a small
parent that starts, restarts and stops them.  Each worker is a daemon of README
"Several daemons", so this needs PostgreSQL while SQLite serves one daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from oned_images.metrics import PUBLISH_SECONDS
from tests.e2e.test_several_daemons import call, db_status, fs_guarded_remotes, ok
from tests.support.daemon import REPO, Daemon, backend, joining, wait_for
from tests.support.remotes import driver_config, processes_with

LEASE = 3
WORKERS = f"WORKERS = 2\nDAEMON_LEASE = {LEASE}\n"


@pytest.fixture
def workers(fresh_daemon):
    def make(extra: str = "") -> Daemon:
        return fresh_daemon(WORKERS + extra)

    return make


def children(pid: int) -> dict[int, int]:
    """worker index -> pid of the parent's children (their command line names it)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue  # a killed worker, reaped since the parent's list was read
            if b"--worker" in cmd:
                out[int(cmd[cmd.index(b"--worker") + 1])] = int(child)
    return out


def scrape(d: Daemon) -> tuple[str, str]:
    """One /metrics page on a new connection: (the worker that answered, the page)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics") as reply:
        return reply.headers["X-Daemon-Name"], reply.read().decode()


def metrics_pages(d: Daemon, names: set[str], tries: int = 200) -> dict[str, str]:
    """A /metrics page from each worker (a scrape reaches one of them): name -> page."""
    pages: dict[str, str] = {}
    for _ in range(tries):
        name, text = scrape(d)
        pages.setdefault(name, text)
        if set(pages) == names:
            return pages
    raise AssertionError(f"only {sorted(pages)} answered /metrics")


def metrics_page(d: Daemon) -> str:
    """The page, whichever worker answers (every worker's counts summed)."""
    return scrape(d)[1]


class WorkerLine:
    """A kept-alive connection that a given worker accepted: calls through it reach that
    worker (the kernel gives a new connection to whichever worker accepts first, so new
    connections alone may all reach one of them)."""

    def __init__(self, d: Daemon, names: set[str], tries: int = 400) -> None:
        import http.client

        self.conns: dict[str, http.client.HTTPConnection] = {}
        for _ in range(tries):
            conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
            conn.request("GET", "/metrics")
            reply = conn.getresponse()
            reply.read()
            name = reply.headers["X-Daemon-Name"]
            if name in self.conns:
                conn.close()
            else:
                self.conns[name] = conn
            if set(self.conns) == names:
                return
        raise AssertionError(f"only {sorted(self.conns)} accepted {tries} connections")

    def call(self, name: str, method: str, *args) -> list:
        conn = self.conns[name]
        conn.request("POST", "/RPC2", xmlrpc.client.dumps(args, method),
                     {"Content-Type": "text/xml"})
        return list(xmlrpc.client.loads(conn.getresponse().read())[0][0])

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def counter(page: str, method: str) -> float:
    m = re.search(rf'^oned_images_xmlrpc_calls_total\{{method="{re.escape(method)}",'
                  r'result="success"\} (\S+)$', page, re.M)
    return float(m[1]) if m else 0.0


def test_two_workers_answer_calls_each_in_its_own_process(workers):
    d = workers()
    pids = children(d.proc.pid)
    assert sorted(pids) == [1, 2] and len(set(pids.values())) == 2
    name = f"{os.uname().nodename}:{d.port}"
    lines = db_status(d).splitlines()[1:]
    assert [ln.split(", lease")[0] for ln in lines] == [
        f"daemon {name}-w{k}: pid {pids[k]} on {os.uname().nodename}" for k in (1, 2)]
    for _ in range(60):  # a new connection per call, as most clients do
        assert xmlrpc.client.ServerProxy(d.url).one.system.version(d.session())[0] is True
    # the page is the same whichever worker answers: the calls of both, summed
    for page in metrics_pages(d, {f"{name}-w1", f"{name}-w2"}).values():
        assert counter(page, "one.system.version") == 60
    log = d.log_text()
    for k in (1, 2):
        assert f" [{name}-w{k}] [Z0][ReM][D]: Req:" in log
        assert f" [{name}] [Z0][OnM][I]: Worker {k} (pid {pids[k]}) is ready\n" in log
    assert (f"oned-images: listening on http://127.0.0.1:{d.port}/RPC2 (2 workers, pids "
            f"{pids[1]}, {pids[2]})\n") in log
    assert log.count("oned-images: config ") == 1  # the start-up lines: once, not per worker


def test_one_metrics_page_for_all_workers_and_a_restart_keeps_the_counts(workers):
    """/metrics sums every worker's counters and live gauges whichever worker a scrape
    reaches, lists each live worker in daemon_info once, and a worker killed and
    restarted takes nothing back from the counters (its gauges leave with it)."""
    d = workers()
    name = f"{os.uname().nodename}:{d.port}"
    names = {f"{name}-w1", f"{name}-w2"}
    host = os.uname().nodename
    lines = WorkerLine(d, names)
    uid = ok(d, "one.user.allocate", "sam", "pw", "", [])
    for k, n in ((1, 3), (2, 5)):  # 3 calls through worker 1, 5 through worker 2
        for _ in range(n):
            assert lines.call(f"{name}-w{k}", "one.user.info", "sam:pw", -1)[0] is True
    failed = lines.call(f"{name}-w2", "one.user.info", "sam:wrong", -1)
    assert failed[:2] == [False, "[one.user.info] User couldn't be authenticated, "
                                 "aborting call."]
    lines.close()
    time.sleep(PUBLISH_SECONDS * 1.5)
    pages = metrics_pages(d, names)
    for page in pages.values():
        assert counter(page, "one.user.info") == 8
        assert re.search(r'^oned_images_xmlrpc_calls_total\{method="one.user.info",'
                         r'result="failure"\} 1.0$', page, re.M), page
        assert gauge(page, "login_failures_total") == 1
        assert sorted(re.findall(r"^oned_images_daemon_info\{(.*)\} (\S+)$", page, re.M)) == [
            (f'host="{host}",name="{name}-w1"', "1.0"), (f'host="{host}",name="{name}-w2"', "1.0")]
        assert re.search(r'^oned_images_xmlrpc_call_duration_seconds_count\{'
                         r'method="one.user.info"\} 9.0$', page, re.M), page
    # sam's secret is cached in both workers: the gauge is their sum
    sessions = gauge(pages[f"{name}-w1"], "cached_sessions")
    assert sessions == gauge(pages[f"{name}-w2"], "cached_sessions") >= 2
    pids = children(d.proc.pid)
    os.kill(pids[2], signal.SIGKILL)
    wait_for(lambda: children(d.proc.pid).get(2) not in (None, pids[2]), timeout=20)
    wait_for(lambda: f"Worker 2 (pid {children(d.proc.pid)[2]}) is ready" in d.log_text(),
             timeout=20)
    time.sleep(PUBLISH_SECONDS * 1.5)
    for page in metrics_pages(d, names).values():
        assert counter(page, "one.user.info") == 8  # worker 2's five calls still counted
        assert len(re.findall(r"^oned_images_daemon_info\{", page, re.M)) == 2
        # the dead worker's cached sessions went with it; the new one has none yet
        assert gauge(page, "cached_sessions") < sessions
    assert uid > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_copies_through_both_workers_finish_once_and_a_killed_worker_is_restarted(
        workers, tmp_path, request):
    """Copies allocated on new connections land on both workers; kill -9 of one: the
    parent restarts it (same name), its claimed copies are run again, each image is
    copied by one process at a time and ends READY."""
    state = tmp_path / "state"
    state.mkdir()
    remotes = fs_guarded_remotes(tmp_path / "remotes", state)
    src = Path("/var/tmp") / f"oned-images-workers-{os.getpid()}.raw"  # under SAFE_DIRS
    src.write_bytes(os.urandom(4 * 1024 * 1024))
    request.addfinalizer(lambda: src.unlink(missing_ok=True))
    d = workers(driver_config(remotes, "-t 15 -d dummy,fs"))
    name = f"{os.uname().nodename}:{d.port}"
    pids = children(d.proc.pid)

    def allocate(n: int) -> int:
        return ok(d, "one.image.allocate",
                  f'NAME="c{n}"\nPATH="{src}"\nLIMIT_TRANSFER_BW="1M"', 1)

    with ThreadPoolExecutor(8) as pool:
        ids = sorted(pool.map(allocate, range(16)))
    assert len(set(ids)) == 16
    runs = state / "runs"
    wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 16, timeout=30)
    held = {k: re.findall(r"image (\d+) cp", line) for line in db_status(d).splitlines()
            for k in (1, 2) if line.startswith(f"daemon {name}-w{k}:")}
    assert held[1] and held[2], held  # both workers took copies
    victim = pids[2]
    os.kill(victim, signal.SIGKILL)
    new = wait_for(lambda: (c := children(d.proc.pid)).get(2) not in (None, victim)
                   and c[2], timeout=20)
    assert children(d.proc.pid)[1] == pids[1]  # the other one was left alone

    def settled() -> bool:
        return all("<STATE>1</STATE>" in ok(d, "one.image.info", i) for i in ids)

    wait_for(settled, timeout=90, interval=0.5)
    assert not (state / "twice").exists()
    counts = {i: runs.read_text().split().count(str(i)) for i in ids}
    assert {i for i, c in counts.items() if c > 1} <= {int(i) for i in held[2]}
    assert all(c >= 1 for c in counts.values())
    log = d.log_text()
    assert re.search(rf" \[{re.escape(name)}\] \[Z0\]\[OnM\]\[W\]: Worker 2 \(pid {victim}\) "
                     r"killed by signal 9 after [\d.]+ s: restarting it in 1 s\n", log), log[-3000:]
    assert f" [{name}] [Z0][OnM][I]: Worker 2 started (pid {new})\n" in log
    assert f" [{name}] [Z0][OnM][I]: Worker 2 (pid {new}) is ready\n" in log
    base = Path(ok(d, "one.datastore.info", 1).split("<BASE_PATH><![CDATA[")[1]
                .split("]]>")[0])
    sources = {ok(d, "one.image.info", i).split("<SOURCE><![CDATA[")[1].split("]]>")[0]
               for i in ids}
    wait_for(lambda: {str(p) for p in base.iterdir()} == sources, timeout=2 * LEASE)


def in_dir(marker: str) -> list[int]:
    """Live processes other than workers whose working directory is under ``marker``
    (driver scripts run in VAR_LOCATION)."""
    found = []
    for pid in processes_with(""):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cwd.startswith(marker) and b"oned_images" not in cmd:
            found.append(pid)
    return found


def _slow_copy(d: Daemon, src: Path, n: int) -> int:
    return ok(d, "one.image.allocate", f'NAME="slow{n}"\nPATH="{src}"\nLIMIT_TRANSFER_BW="1M"',
              1)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_parent_leaves_no_process(workers, tmp_path, request, how):
    """SIGTERM: the parent stops every worker and exits 0.  kill -9 of the parent: the
    workers get SIGTERM from the kernel (PR_SET_PDEATHSIG) and stop too.  Either way no
    worker and no driver script of theirs is left."""
    src = Path("/var/tmp") / f"oned-images-workers-stop-{os.getpid()}.raw"
    src.write_bytes(os.urandom(30 * 1024 * 1024))
    request.addfinalizer(lambda: src.unlink(missing_ok=True))
    d = workers()
    pids = children(d.proc.pid)
    _slow_copy(d, src, 1)
    _slow_copy(d, src, 2)
    marker = str(d.tmp)  # every worker's command line and every driver's cwd name it
    wait_for(lambda: len(in_dir(marker)) >= 2)  # the two copies' scripts run
    parent = d.proc.pid
    code = d.stop(getattr(signal, how))
    assert code == (0 if how == "SIGTERM" else -9)

    wait_for(lambda: processes_with(marker) + in_dir(marker) == [], timeout=30)
    for pid in (parent, *pids.values()):
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"


def _config(d: Daemon) -> Path:
    d.tmp.mkdir(parents=True, exist_ok=True)
    return d.write_config()


def _serve(conf: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp), ONE_AUTH=str(tmp / "auth"))
    return subprocess.run([sys.executable, "-m", "oned_images", "serve", "--config", str(conf)],
                          capture_output=True, text=True, env=env, timeout=60, cwd=str(tmp))


def test_a_configuration_error_is_reported_once(fresh_daemon):
    d = fresh_daemon("WORKERS = 0\n", start=False)
    conf = _config(d)
    line = conf.read_text().splitlines().index("WORKERS = 0") + 1
    out = _serve(conf, d.tmp)
    assert out.returncode == 2
    assert out.stderr == (f"oned-images: configuration error: {conf}:{line}: WORKERS: "
                          "bad value '0': expected a positive integer\n")


def test_workers_on_an_in_memory_sqlite_database_are_refused_with_what_to_do(fresh_daemon):
    d = fresh_daemon(WORKERS, start=False)
    conf = _config(d)
    conf.write_text(re.sub(r"^DB = \[.*\]$", 'DB = [ BACKEND = "sqlite", PATH = ":memory:" ]',
                           conf.read_text(), flags=re.M))
    out = _serve(conf, d.tmp)
    assert out.returncode == 2
    assert out.stderr == (
        "oned-images: configuration error: WORKERS = 2 runs 2 daemons on one database, "
        "and an in-memory SQLite database serves one daemon: give DB a PATH (a file) or "
        "use PostgreSQL, or set WORKERS = 1\n")
    assert not list(d.var.glob("*.db"))  # refused before anything was created


def test_a_worker_that_cannot_start_stops_the_parent_with_one_message(fresh_daemon):
    """The database cannot be reached: worker 1 says why, once; the parent says that it
    stops; worker 2 was never started."""
    d = fresh_daemon(WORKERS, start=False)
    conf = _config(d)
    unreachable = ('DB = [ BACKEND = "sqlite", PATH = "/nonexistent/oned-images/one.db" ]'
                   if backend() == "sqlite" else None)
    conf.write_text(re.sub(r"^DB = \[.*\]$", unreachable, conf.read_text(), flags=re.M)
                    if unreachable else conf.read_text().replace("PORT = 5432", "PORT = 1"))
    out = _serve(conf, d.tmp)
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("oned-images:")]
    assert len(lines) == 2, out.stderr  # (the others are the log: LOG SYSTEM = std)
    assert "Worker 2 started" not in out.stderr
    assert lines[0].startswith("oned-images: cannot open the database: ")
    assert lines[1] == "oned-images: worker 1 of 2 could not start (it exited with status 1): stopping"


def test_a_port_in_use_stops_the_parent_before_any_worker(workers, fresh_daemon):
    a = workers()
    b = fresh_daemon(WORKERS, start=False)
    conf = _config(b)
    conf.write_text(conf.read_text().replace("PORT = 0\n", f"PORT = {a.port}\n"))
    out = _serve(conf, b.tmp)
    assert out.returncode == 1
    assert out.stderr == (f"oned-images: cannot listen on 127.0.0.1:{a.port}: "
                          "Address already in use\n")


def test_under_systemd_the_parent_is_ready_once_and_kills_a_worker_that_hangs(fresh_daemon):
    """NOTIFY_SOCKET: READY=1 comes once, from the parent, after both workers are ready;
    the parent pings the watchdog; a worker that stops its pings to the parent (SIGSTOP)
    is killed and started again; STOPPING=1 at the end."""
    from tests.e2e.test_systemd import NotifySocket

    d = fresh_daemon(WORKERS, start=False)
    notify = NotifySocket(d.tmp / "port")
    d.env.update(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="2000000")
    try:
        d.start()
        pids = children(d.proc.pid)
        ready = wait_for(lambda: [m for m in notify.messages if "READY=1" in m.text])
        assert len(ready) == 1 and ready[0].port_answered
        assert ready[0].text == (
            f"READY=1\nSTATUS=Listening on http://127.0.0.1:{d.port}/RPC2 with 2 workers "
            f"(pids {pids[1]}, {pids[2]})\nMAINPID={d.proc.pid}")
        seen = len(notify.messages)
        wait_for(lambda: notify.texts()[seen:].count("WATCHDOG=1") >= 2, timeout=5)
        os.kill(pids[1], signal.SIGSTOP)
        new = wait_for(lambda: (c := children(d.proc.pid)).get(1) not in (None, pids[1])
                       and c[1], timeout=20)
        wait_for(lambda: f"Worker 1 (pid {new}) is ready" in d.log_text(), timeout=30)
        assert (f"Worker 1 (pid {pids[1]}) stopped its watchdog pings: killing it"
                in d.log_text())
        assert d.stop() == 0
        assert notify.texts()[-1] == "STOPPING=1\nSTATUS=Stopping the workers"
        assert [m for m in notify.messages if "READY=1" in m.text] == ready
    finally:
        notify.close()


def test_an_upload_over_one_connection_is_staged_in_its_workers_directory(workers):
    """Each worker stages its own uploads (uploads/w<k>/: a worker's start-up must not
    judge a sibling's uploads); the copy of the finished upload reads it from there."""
    import requests

    from tests.e2e.test_uploads import ADMIN, TUS, meta

    d = workers()
    body = os.urandom(300_000)
    with requests.Session() as http:  # tus clients keep their connection
        reply = http.post(f"http://127.0.0.1:{d.port}/uploads/", timeout=30, headers={
            **TUS, **ADMIN, "Upload-Length": str(len(body)),
            "Upload-Metadata": meta(name="up", type="DATABLOCK")})
        assert reply.status_code == 201
        url = reply.headers["Location"]
        staged = [p for p in (d.var / "uploads").glob("w*/*.bin")]
        assert [p.parent.name for p in staged] in (["w1"], ["w2"]), staged
        for offset in (0, len(body) // 2):
            part = body[offset:offset + len(body) // 2] if offset == 0 else body[offset:]
            reply = http.patch(url, data=part, timeout=30, headers={
                **TUS, **ADMIN, "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream"})
            assert reply.status_code == 204, reply.text
    iid = int(reply.headers["X-One-Image-Id"])
    doc = wait_for(lambda: (x := ok(d, "one.image.info", iid)) and "<STATE>1</STATE>" in x
                   and x, timeout=30)
    source = doc.split("<SOURCE><![CDATA[")[1].split("]]>")[0]
    assert Path(source).read_bytes() == body


def tus(line: WorkerLine, name: str, method: str, url: str, body: bytes = b"",
        headers: dict | None = None, auth: dict | None = None):
    """One tus request through the connection worker ``name`` accepted."""
    from tests.e2e.test_uploads import ADMIN, TUS

    conn = line.conns[name]
    conn.request(method, url, body=body or None, headers={
        **TUS, **(auth or ADMIN), **(headers or {})})
    reply = conn.getresponse()
    return reply.status, dict(reply.getheaders()), reply.read()


def patch_headers(offset: int) -> dict:
    return {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}


def test_an_upload_resumes_through_whichever_worker_the_client_reaches(workers):
    """A tus client that reconnects may reach the other worker: that worker takes the
    upload over (its files move to uploads/w<k>/ under the data file's lock) and the
    upload goes on where it stopped, back and forth, to one image holding every byte.
    Another user's upload id is "No such upload" through either worker, and nothing
    moves; while one worker writes to the upload the other answers a HEAD with what is
    stored so far and a PATCH with 409."""
    from tests.e2e.test_uploads import ADMIN, basic, meta

    d = workers()
    name = f"{os.uname().nodename}:{d.port}"
    w1, w2 = f"{name}-w1", f"{name}-w2"
    line = WorkerLine(d, {w1, w2})
    staged = d.var / "uploads"
    try:
        body = os.urandom(3 * 100_000)
        status, head, _ = tus(line, w1, "POST", "/uploads/", headers={
            "Upload-Length": str(len(body)), "Upload-Metadata": meta(name="moving",
                                                                     type="DATABLOCK")})
        assert status == 201
        url = "/uploads/" + head["Location"].rsplit("/", 1)[1]
        upload_id = url.rsplit("/", 1)[1]
        assert tus(line, w1, "PATCH", url, body[:100_000], patch_headers(0))[0] == 204
        assert sorted(p.relative_to(staged).as_posix() for p in staged.glob("w*/*")) == [
            f"w1/{upload_id}.bin", f"w1/{upload_id}.json"]

        # another user: not found through either worker, and the files stay in w1
        uid = ok(d, "one.user.allocate", "mallory", "pw", "", [])
        assert uid > 0
        for w in (w2, w1):
            status, _, text = tus(line, w, "HEAD", url, auth=basic("mallory", "pw"))
            assert (status, text) == (404, b"")
            status, _, text = tus(line, w, "PATCH", url, b"x" * 10, patch_headers(100_000),
                                  auth=basic("mallory", "pw"))
            assert (status, text) == (404, b"No such upload\n")
        assert (staged / "w1" / f"{upload_id}.json").exists()

        # HEAD through w2: the offset as w1 left it; the upload is w2's now
        status, head, _ = tus(line, w2, "HEAD", url)
        assert (status, head["Upload-Offset"], head["Upload-Length"]) == (
            200, "100000", str(len(body)))
        assert sorted(p.relative_to(staged).as_posix() for p in staged.glob("w*/*")) == [
            f"w2/{upload_id}.bin", f"w2/{upload_id}.json"]
        record = json.loads((staged / "w2" / f"{upload_id}.json").read_text())
        assert f'PATH="{staged / "w2" / upload_id}.bin"' in record["template"]
        assert tus(line, w2, "PATCH", url, body[100_000:200_000],
                   patch_headers(100_000))[0] == 204
        assert "taken over from another worker" in d.log_text()

        # while w2 writes (a PATCH whose body is half sent), w1 answers 409
        conn = line.conns[w2]
        conn.putrequest("PATCH", url)
        for key, value in {"Tus-Resumable": "1.0.0", **ADMIN, **patch_headers(200_000),
                           "Content-Length": "100000"}.items():
            conn.putheader(key, value)
        conn.endheaders()
        conn.send(body[200_000:250_000])
        wait_for(lambda: (staged / "w2" / f"{upload_id}.bin").stat().st_size == 250_000,
                 timeout=10)
        status, head, _ = tus(line, w1, "HEAD", url)  # what is stored so far
        assert (status, head["Upload-Offset"]) == (200, "250000")
        status, _, text = tus(line, w1, "PATCH", url, body[200_000:], patch_headers(200_000))
        assert (status, text) == (409, b"Another request is writing to this upload\n")
        conn.send(body[250_000:])
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 204
        iid = int(reply.getheader("X-One-Image-Id"))
        # the finished upload's record is read where it lies (not moved: its copy reads
        # the data file there)
        status, head, _ = tus(line, w1, "HEAD", url)
        assert (status, head["Upload-Offset"], head["X-One-Image-Id"]) == (
            200, str(len(body)), str(iid))
        doc = wait_for(lambda: (x := ok(d, "one.image.info", iid)) and "<STATE>1</STATE>" in x
                       and x, timeout=30)
        source = doc.split("<SOURCE><![CDATA[")[1].split("]]>")[0]
        assert Path(source).read_bytes() == body
        assert tus(line, w1, "DELETE", url)[0] == 204
        assert tus(line, w2, "HEAD", url)[0] == 404
        assert list(staged.glob("w*/*")) == []
    finally:
        line.close()


def test_progress_shows_the_copies_of_every_worker(workers):
    """GET /api/progress answers for both workers whichever one a poll reaches (each
    publishes its copies in run/w<k>/progress.json); another user sees none of them,
    and a finished copy leaves both answers."""
    from tests.e2e.test_uploads import ADMIN, basic

    d = workers()
    name = f"{os.uname().nodename}:{d.port}"
    w1, w2 = f"{name}-w1", f"{name}-w2"
    line = WorkerLine(d, {w1, w2})
    base = Path("/var/tmp") / f"oned-images-wprogress-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    src = base / "disk.raw"
    src.write_bytes(os.urandom(6 << 20))
    try:
        uid = ok(d, "one.user.allocate", "eve", "pw", "", [])
        assert uid > 0
        # LIMIT_TRANSFER_BW: 1 MB/s, about 6 s; allocated through w1, so w1 copies
        iid = line.call(w1, "one.image.allocate", d.session(),
                        f'NAME="slow"\nPATH="{src}"\nLIMIT_TRANSFER_BW="1m"\n'
                        'TYPE="DATABLOCK"', 1)[1]

        def polled(w: str, auth: dict) -> dict:
            conn = line.conns[w]
            conn.request("GET", "/api/progress", headers=auth)
            reply = conn.getresponse()
            assert reply.status == 200
            return json.loads(reply.read())

        def both_midway():
            seen = [polled(w, ADMIN).get(str(iid)) for w in (w1, w2)]
            return seen if all(r and 0 < r["done"] < r["total"] for r in seen) else None

        seen = wait_for(both_midway, timeout=30)
        assert [(r["action"], r["total"]) for r in seen] == [("cp", 6 << 20)] * 2
        assert [polled(w, basic("eve", "pw")) for w in (w1, w2)] == [{}, {}]
        wait_for(lambda: "<STATE>1</STATE>" in ok(d, "one.image.info", iid), timeout=60)
        wait_for(lambda: [polled(w, ADMIN) for w in (w1, w2)] == [{}, {}], timeout=10)
    finally:
        line.close()
        shutil.rmtree(base, ignore_errors=True)


def gauge(page: str, name: str) -> float:
    return float(re.search(rf"^oned_images_{name} (\S+)$", page, re.M)[1])


def test_identity_changed_through_one_worker_holds_on_every_next_call_without_a_db_read(
        workers):
    """store/versions.py: the workers learn of a password, group or ACL change from the
    counters they share in memory.  Each call below is a new connection (either worker
    may answer); every one after the change must see it, and the workers read the
    database's counters only when something changed, not once per call."""
    d = workers()
    name = f"{os.uname().nodename}:{d.port}"
    names = {f"{name}-w1", f"{name}-w2"}
    uid = ok(d, "one.user.allocate", "bob", "old", "", [])
    gid = ok(d, "one.group.allocate", "team")
    spare = ok(d, "one.group.allocate", "spare")
    acl_with_spare = ok(d, "one.acl.info")
    denied = [False, f"[one.group.info] User [{uid}] : Not authorized to perform USE GROUP "
                     f"[{gid}]."]

    lines = WorkerLine(d, names)

    def each_call(method: str, *args, session: str = "bob:old"):
        """24 calls, 12 through each worker, alternating."""
        return [lines.call(n, method, session, *args)[:2]
                for _ in range(12) for n in sorted(names)]

    wait_for(lambda: "cache_checks" in metrics_page(d), timeout=10)
    assert each_call("one.user.info", -1) == [[True, ok(d, "one.user.info", uid)]] * 24
    time.sleep(PUBLISH_SECONDS * 1.5)  # both workers' gauges published
    before = metrics_page(d)

    with xmlrpc.client.ServerProxy(d.url) as one:  # the change and its reply: one connection
        assert one.one.user.passwd(d.session(), uid, "new")[0] is True
    refused = [False, "[one.user.info] User couldn't be authenticated, aborting call."]
    assert each_call("one.user.info", -1) == [refused] * 24
    assert all(doc[0] for doc in each_call("one.user.info", -1, session="bob:new"))
    assert each_call("one.group.info", gid, session="bob:new") == [denied] * 24

    with xmlrpc.client.ServerProxy(d.url) as one:
        assert one.one.user.chgrp(d.session(), uid, gid)[0] is True
    docs = each_call("one.user.info", -1, session="bob:new")
    assert {doc[1].split("<GID>")[1].split("<")[0] for doc in docs} == {str(gid)}
    assert all(reply[0] for reply in each_call("one.group.info", gid, session="bob:new"))

    with xmlrpc.client.ServerProxy(d.url) as one:  # out of the group: its rights go at once
        assert one.one.user.chgrp(d.session(), uid, 1)[0] is True
    assert each_call("one.group.info", gid, session="bob:new") == [denied] * 24

    with xmlrpc.client.ServerProxy(d.url) as one:  # a group's ACL rules deleted with it
        assert one.one.group.delete(d.session(), spare)[0] is True
    acl = ok(d, "one.acl.info")
    assert acl != acl_with_spare
    assert each_call("one.acl.info", session=d.session()) == [[True, acl]] * 24

    time.sleep(PUBLISH_SECONDS * 1.5)
    after = metrics_page(d)
    # the workers answered after the changes, and read the database rarely
    answered = sum(counter(after, m) - counter(before, m)
                   for m in ("one.user.info", "one.group.info", "one.acl.info"))
    assert answered >= 96, answered  # the successful calls of each_call
    checks = gauge(after, "cache_checks") - gauge(before, "cache_checks")
    assert checks <= 16, (checks, answered)  # one per change (and renewal), not per call
    lines.close()


def test_with_another_daemon_on_the_database_the_workers_read_the_counters_per_call(
        workers, tmp_path):
    """A daemon that is not one of the parent's workers writes no shared counter: while
    it is live the workers read the database's counters before each call (and are right
    after a change made through it); once it has left they stop reading them."""
    d = workers()
    name = f"{os.uname().nodename}:{d.port}"
    names = {f"{name}-w1", f"{name}-w2"}
    other = joining(d, tmp_path / "other", f"DAEMON_LEASE = {LEASE}\n")
    other.start()
    try:
        lines = WorkerLine(d, names)

        def each_call(session: str) -> list:
            return [lines.call(n, "one.user.info", session, -1)[:2]
                    for _ in range(12) for n in sorted(names)]

        uid = ok(d, "one.user.allocate", "carol", "old", "", [])
        assert all(reply[0] for reply in each_call("carol:old"))
        time.sleep(PUBLISH_SECONDS * 1.5)
        before = metrics_page(d)
        ok(other, "one.user.passwd", uid, "new")
        refused = [False, "[one.user.info] User couldn't be authenticated, aborting call."]
        assert each_call("carol:old") == [refused] * 24
        assert all(reply[0] for reply in each_call("carol:new"))
        time.sleep(PUBLISH_SECONDS * 1.5)
        during = metrics_page(d)
        lines.close()
    finally:
        other.drop()
    # a read per call (the refused ones included), 24 through each worker
    answered = counter(during, "one.user.info") - counter(before, "one.user.info")
    checks = gauge(during, "cache_checks") - gauge(before, "cache_checks")
    assert answered == 24 and checks >= 48, (checks, answered)
    time.sleep(LEASE)  # both renewed since it left: no stranger live
    before = metrics_page(d)
    assert all(call(d, "one.user.info", -1, session="carol:new")[0] for _ in range(40))
    time.sleep(PUBLISH_SECONDS * 1.5)
    after = metrics_page(d)
    assert gauge(after, "cache_checks") - gauge(before, "cache_checks") <= 4
