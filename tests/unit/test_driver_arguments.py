"""ARGUMENTS of DATASTORE_MAD and TM_MAD: one reader of oned's option pairs, with the
texts an operator sees for each mistake, in the order the options stand."""

from __future__ import annotations

import pytest

from oned_images import config
from oned_images.config import ConfigError

DS = 'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "{}" ]'
TM = 'TM_MAD = [ EXECUTABLE = "one_tm", ARGUMENTS = "{}" ]'


@pytest.mark.parametrize(("text", "error"), [
    (DS.format("-t 2 -d"), "DATASTORE_MAD: ARGUMENTS: -d needs a value"),
    (DS.format("-x 1 -t"), "DATASTORE_MAD: ARGUMENTS: unknown option -x"),
    (DS.format("-t 0 -d"), "DATASTORE_MAD: ARGUMENTS: -t expects a positive integer"),
    (DS.format("-w x"), "DATASTORE_MAD: ARGUMENTS: -w expects a positive integer"),
    (DS.format("-d 'a"), "DATASTORE_MAD: ARGUMENTS: No closing quotation"),
    (TM.format("-w abc"), "TM_MAD: ARGUMENTS: -w expects a positive integer"),
    (TM.format("-t 0"), "TM_MAD: ARGUMENTS: -t expects a positive integer"),
    (TM.format("-d dummy -q 1"), "TM_MAD: ARGUMENTS: unknown option -q"),
    (TM.format("-d"), "TM_MAD: ARGUMENTS: -d needs a value"),
])
def test_argument_mistakes(text, error):
    with pytest.raises(ConfigError) as exc:
        config.parse(text)
    assert str(exc.value) == f"<config>:1: {error}"


def test_arguments_read():
    ds = config.parse(DS.format("-t 7 -d ' fs, dummy ,' -w 30 -s x")).driver
    assert (ds.concurrency, ds.allowed, ds.timeouts["cp"], ds.timeouts["stat"]) == (
        7, ("fs", "dummy"), 30, 30)
    tm = config.parse(TM.format("-d a,,b -t 3 -w 4")).tm
    assert (tm.allowed, tm.timeout) == (("a", "b"), 4)
