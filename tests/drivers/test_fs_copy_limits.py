"""fs/cp bounds what a copy writes: decompression bombs, endless downloads, images
converted to a bigger raw file (README "Drivers", fs_action.copy_limit).

The bound is the space the DS_DRIVER_ACTION_DATA says the datastore has (FREE_MB,
or LIMIT_MB - USED_MB when less; once monitored) and the operator's
DRIVER_COPY_MAX_MB (ONED_COPY_MAX_MB).  It counts the file's size, holes included:
a gzip of zeros expands into holes that take no disk space here, yet would fill the
disk of the first copy made of it.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import subprocess
import time

import pytest

from tests.drivers.test_fs_driver import (  # noqa: F401  (http_server: a fixture)
    Driver,
    MiB,
    cp_result,
    http_server,
    ok,
    stat,
    stat_mb,
)

COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


class LimitedDriver(Driver):
    """The fs driver with the datastore figures of the document and the runner's
    ONED_COPY_MAX_MB chosen by the test."""

    def __init__(self, root, free: int = 900, used: int = 100, total: int = 1000,
                 copy_max: str | None = None, checked: str | None = None) -> None:
        super().__init__(root)
        self.figures = {"TOTAL_MB": total, "FREE_MB": free, "USED_MB": used}
        self.copy_max, self.checked = copy_max, checked

    def doc(self, *args, **kw) -> str:
        text = super().doc(*args, **kw)
        for key, default in (("TOTAL_MB", 1000), ("FREE_MB", 900), ("USED_MB", 100)):
            text = text.replace(f"<{key}>{default}</{key}>",
                                f"<{key}>{self.figures[key]}</{key}>", 1)
        return text

    def env(self) -> dict:
        env = super().env()
        if self.copy_max is not None:
            env["ONED_COPY_MAX_MB"] = self.copy_max
        if self.checked is not None:
            env["ONED_CAPACITY_CHECK"] = self.checked
        return env


def zeros(drv: Driver, mib: float, kind: str = "gz", extra: int = 0):
    """A compressed file of ``mib`` MiB (+ ``extra`` bytes) of zeros in the safe dir."""
    src = drv.inp / f"zeros.raw.{kind}"
    src.write_bytes(COMPRESS[kind](bytes(int(mib * MiB) + extra)))
    return src


def free_text(src, mb: int) -> str:
    return (f"Image {src} exceeds {mb} MiB, the free space of datastore 1 (FREE_MB); "
            "free space there and retry")


def assert_exact_failure(res, text: str) -> None:
    assert res.rc == 1 and res.error == text, res


@pytest.fixture
def keep(tmp_path):
    """Another image already in BASE_PATH: a failed copy must not touch it."""
    def put(drv: Driver):
        drv.base.mkdir(parents=True, exist_ok=True)
        other = drv.base / ("a" * 32)
        other.write_bytes(b"other image" * 1000)
        return other, other.read_bytes()
    return put


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_a_bomb_stops_at_the_datastore_free_space(tmp_path, keep, kind):
    drv = LimitedDriver(tmp_path, free=8)
    other, content = keep(drv)
    src = zeros(drv, 64, kind)
    assert src.stat().st_size < 64 * 1024     # a few KiB that claim 64 MiB
    assert_exact_failure(drv.cp(src), free_text(src, 8))
    assert drv.base_files() == [other.name] and other.read_bytes() == content


@pytest.mark.timeout(60)
def test_a_bomb_stops_early_not_after_expanding(tmp_path):
    # 4 GiB of zeros in 4 MiB of gzip: stopped at 8 MiB, it takes well under a second
    drv = LimitedDriver(tmp_path, free=8)
    src = drv.inp / "huge.raw.gz"
    block = gzip.compress(bytes(64 * MiB))
    src.write_bytes(block * 64)   # concatenated members: 4 GiB
    started = time.monotonic()
    assert_exact_failure(drv.cp(src), free_text(src, 8))
    assert time.monotonic() - started < 10
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_the_limit_is_inclusive(tmp_path):
    drv = LimitedDriver(tmp_path, free=8)
    dst, fmt = cp_result(drv, drv.cp(zeros(drv, 8)))
    assert fmt == "raw" and dst.stat().st_size == 8 * MiB
    dst.unlink()
    src = zeros(drv, 8, extra=1)
    assert_exact_failure(drv.cp(src), free_text(src, 8))
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_limit_mb_bounds_below_free_mb(tmp_path):
    drv = LimitedDriver(tmp_path, free=900, used=100)
    src = zeros(drv, 16)
    res = drv.cp(src, ds_template={"LIMIT_MB": "105"})
    assert_exact_failure(res, f"Image {src} exceeds 5 MiB, what datastore 1 may still use "
                              "(LIMIT_MB 105 - USED_MB 100); raise its LIMIT_MB and retry")
    # a LIMIT_MB above what is free changes nothing: FREE_MB is the bound
    drv.figures["FREE_MB"] = 4
    assert_exact_failure(drv.cp(src, ds_template={"LIMIT_MB": "5000"}), free_text(src, 4))
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_the_operators_limit(tmp_path):
    drv = LimitedDriver(tmp_path, copy_max="4")
    src = zeros(drv, 16, "xz")
    assert_exact_failure(drv.cp(src), f"Image {src} exceeds 4 MiB, the largest copy "
                                      "DRIVER_COPY_MAX_MB allows (oned-images.conf); raise "
                                      "it there and retry")
    assert drv.base_files() == []
    # 0 (the default) is no limit of its own
    drv.copy_max = "0"
    cp_result(drv, drv.cp(src))


@pytest.mark.timeout(60)
def test_an_unmonitored_datastore_bounds_nothing(tmp_path):
    # TOTAL_MB 0: never monitored, its FREE_MB 0 means nothing (the capacity check
    # at allocate is oned's; the copy is bounded by DRIVER_COPY_MAX_MB only)
    drv = LimitedDriver(tmp_path, total=0, free=0, used=0)
    dst, _ = cp_result(drv, drv.cp(zeros(drv, 16)))
    assert dst.stat().st_size == 16 * MiB


@pytest.mark.timeout(60)
def test_a_full_datastore_still_takes_an_empty_image(tmp_path):
    drv = LimitedDriver(tmp_path, free=0)
    empty = drv.inp / "empty.raw"
    empty.write_bytes(b"")
    dst, _ = cp_result(drv, drv.cp(empty))
    assert dst.stat().st_size == 0
    src = drv.inp / "one.raw"
    src.write_bytes(b"x")
    assert_exact_failure(drv.cp(src), free_text(src, 0))


@pytest.mark.timeout(60)
def test_qcow2_inside_gzip_passes_stat_but_not_cp(tmp_path):
    # STAT reads the virtual size (1 MiB) from the qcow2 header in the decompressed
    # head; what follows the header is not bounded by it
    drv = LimitedDriver(tmp_path, free=8)
    qcow = drv.root / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "1M"], check=True)
    src = drv.inp / "bomb.qcow2.gz"
    src.write_bytes(gzip.compress(qcow.read_bytes() + bytes(32 * MiB)))
    assert stat_mb(drv, src) == 1
    assert_exact_failure(drv.cp(src), free_text(src, 8))
    assert drv.base_files() == []


@pytest.mark.timeout(60)
def test_plain_files_and_downloads_are_bounded_too(tmp_path, http_server):  # noqa: F811
    drv = LimitedDriver(tmp_path, free=2)
    plain = drv.inp / "plain.raw"
    plain.write_bytes(os.urandom(3 * MiB))
    assert_exact_failure(drv.cp(plain), free_text(plain, 2))
    sparse = drv.inp / "sparse.raw"
    with open(sparse, "wb") as fh:
        fh.truncate(64 * MiB)
    assert_exact_failure(drv.cp(sparse), free_text(sparse, 2))
    (http_server.dir / "disk.raw").write_bytes(os.urandom(3 * MiB))
    url = f"{http_server.url}/disk.raw"
    assert_exact_failure(drv.cp(url), free_text(url, 2))
    assert drv.base_files() == []
    ok(drv.cp(zeros(drv, 2)))


@pytest.mark.timeout(60)
def test_a_conversion_to_a_bigger_raw_file_is_refused(tmp_path):
    # a 64 MiB qcow2 with no data is a few hundred KiB; as the datastore's raw it
    # would be a 64 MiB file
    drv = LimitedDriver(tmp_path, free=8)
    qcow = drv.inp / "empty.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "64M"], check=True)
    assert_exact_failure(drv.cp(qcow, ds_template={"DRIVER": "raw"}), free_text(qcow, 8))
    assert drv.base_files() == []
    # kept as qcow2 (no DRIVER), the same image fits
    _, fmt = cp_result(drv, drv.cp(qcow))
    assert fmt == "qcow2"


@pytest.mark.timeout(60)
def test_an_unchecked_allocate_is_bounded_by_the_operator_only(tmp_path):
    # ONED_CAPACITY_CHECK=NO: the allocate did not check the space (the datastore's
    # DATASTORE_CAPACITY_CHECK is off, or an admin skipped it): FREE_MB is not a bound
    drv = LimitedDriver(tmp_path, free=8, checked="NO")
    dst, _ = cp_result(drv, drv.cp(zeros(drv, 16)))
    assert dst.stat().st_size == 16 * MiB
    drv.copy_max = "4"
    src = zeros(drv, 16, "bz2")
    assert_exact_failure(drv.cp(src), f"Image {src} exceeds 4 MiB, the largest copy "
                                      "DRIVER_COPY_MAX_MB allows (oned-images.conf); raise "
                                      "it there and retry")
    drv.checked, drv.copy_max = "YES", None
    assert_exact_failure(drv.cp(src), free_text(src, 8))


# ---------------------------------------------------------------- STAT's bound
@pytest.mark.timeout(60)
def test_stat_expands_a_bomb_no_further_than_the_datastore_space(tmp_path):
    """STAT measures a compressed raw image by expanding it; it stops one byte past the
    datastore's space and answers one MiB more than that space (the daemon then says
    oned's "Not enough space in datastore", as for the true size), quickly."""
    drv = LimitedDriver(tmp_path, free=8)
    src = drv.inp / "huge.raw.gz"
    src.write_bytes(gzip.compress(bytes(64 * MiB)) * 64)  # 4 GiB of zeros
    started = time.monotonic()
    assert stat_mb(drv, src) == 9
    assert time.monotonic() - started < 10
    # within the space: the true size
    assert stat_mb(drv, zeros(drv, 8)) == 8
    assert stat_mb(drv, zeros(drv, 8, extra=1)) == 9
    # LIMIT_MB - USED_MB below FREE_MB bounds it the same way
    res = ok(drv.run("stat", {"PATH": str(src)}, oid="0", ds_template={"LIMIT_MB": "105"}))
    assert res.out == "6\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["gz", "bz2"])
def test_stat_past_the_operators_limit_fails_with_cps_text(tmp_path, kind):
    drv = LimitedDriver(tmp_path, copy_max="4")
    src = zeros(drv, 16, kind)
    assert_exact_failure(stat(drv, src), f"Image {src} exceeds 4 MiB, the largest copy "
                                         "DRIVER_COPY_MAX_MB allows (oned-images.conf); "
                                         "raise it there and retry")
    assert stat_mb(drv, zeros(drv, 4, kind)) == 4


@pytest.mark.timeout(60)
def test_stat_of_an_unchecked_allocate_counts_past_free_mb(tmp_path):
    drv = LimitedDriver(tmp_path, free=8, checked="NO")
    assert stat_mb(drv, zeros(drv, 16)) == 16
    # and an unmonitored datastore bounds nothing either
    drv = LimitedDriver(tmp_path / "u", total=0, free=0, used=0)
    assert stat_mb(drv, zeros(drv, 16)) == 16


@pytest.mark.timeout(60)
def test_stat_of_a_remote_bomb_is_bounded_too(tmp_path, http_server):  # noqa: F811
    drv = LimitedDriver(tmp_path, free=8)
    (http_server.dir / "bomb.raw.gz").write_bytes(gzip.compress(bytes(256 * MiB)))
    started = time.monotonic()
    assert stat_mb(drv, f"{http_server.url}/bomb.raw.gz") == 9
    assert time.monotonic() - started < 10
