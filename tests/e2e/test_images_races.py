"""Concurrent calls on the same images: each verb is atomic per image (api.md §1.6) and a
name collision found only at write time still gets oned's text, not an Internal error
(on PostgreSQL a failed statement aborts the whole transaction)."""

from __future__ import annotations

import threading

from tests.support.seed import (
    call,
    info,
    num,
    ok,
    register,
    section,
    template_dict,
    user,
    wait_state,
)

ROUNDS = 6
WIDTH = 6


def together(calls):
    """Run the callables at the same moment; return their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i, fn):
        barrier.wait()
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def winner(results) -> int:
    wins = [r[1] for r in results if r[0] is True]
    assert len(wins) == 1, results
    return wins[0]


def test_same_name_allocates(daemon, ds):
    for n in range(ROUNDS):
        text = f'NAME="race-{n}"\nSOURCE="/var/tmp/r"\nFORMAT="raw"\nSIZE="1"'
        results = together([lambda t=text: call(daemon, "one.image.allocate", t, ds)] * WIDTH)
        oid = winner(results)
        assert sorted(tuple(r) for r in results if r[0] is False) == [(
            False, "[one.image.allocate] Error allocating a new image. NAME is already taken "
            f"by IMAGE {oid}.", 16384, -1, -1)] * (WIDTH - 1)


def test_same_name_renames(daemon, ds):
    for n in range(ROUNDS):
        ids = [register(daemon, ds) for _ in range(WIDTH)]
        results = together([lambda i=i, n=n: call(daemon, "one.image.rename", i, f"renamed-{n}")
                            for i in ids])
        oid = winner(results)
        assert sorted(tuple(r) for r in results if r[0] is False) == [(
            False, f"[one.image.rename] image cannot be renamed to renamed-{n} because it "
            f"collides with image {oid}", 2048, -1, -1)] * (WIDTH - 1)


def test_colliding_chowns(daemon, ds):
    for n in range(ROUNDS):
        name = f"owned-{n}"
        ids = [register(daemon, ds, name=name)]
        for _ in range(WIDTH - 1):
            _, session = user(daemon)
            oid = ok(daemon, "one.image.allocate", f'NAME="{name}"\nTYPE="DATABLOCK"\nSIZE="0"',
                     ds, session=session)
            wait_state(daemon, oid, 1)
            ids.append(oid)
        target, _ = user(daemon)
        results = together([lambda i=i, t=target: call(daemon, "one.image.chown", i, t, -1)
                            for i in ids])
        oid = winner(results)
        assert sorted(tuple(r) for r in results if r[0] is False) == [(
            False, f"[one.image.chown] user [{target}] already owns image [{oid}] with NAME "
            f"{name}", 8192, -1, -1)] * (WIDTH - 1)


def test_concurrent_clones_keep_count(daemon, ds):
    src = register(daemon, ds)
    results = together([lambda i=i: call(daemon, "one.image.clone", src, f"par-clone-{i}")
                        for i in range(WIDTH * 2)])
    assert all(r[0] is True for r in results), results
    for r in results:
        wait_state(daemon, r[1], 1)
    xml = wait_state(daemon, src, 1)
    assert (num(xml, "CLONING_OPS"), section(xml, "CLONES")) == (0, "<CLONES></CLONES>")


def test_concurrent_appends_lose_nothing(daemon, ds):
    oid = register(daemon, ds)
    results = together([lambda i=i: call(daemon, "one.image.update", oid, f'K{i}="{i}"', 1)
                        for i in range(WIDTH * 2)])
    assert results == [[True, oid, 0]] * (WIDTH * 2)
    assert template_dict(info(daemon, oid)) == {
        "DEV_PREFIX": "sd", **{f"K{i}": str(i) for i in range(WIDTH * 2)}}
