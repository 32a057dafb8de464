"""DRIVER_COPY_MAX_MB: read from the configuration and handed to every driver script
as ONED_COPY_MAX_MB (fs_action.copy_limit reads it)."""

from __future__ import annotations

import pytest

from oned_images import config
from oned_images.config import ConfigError
from oned_images.driver.runner import DriverRunner


def env_of(conf: config.DaemonConfig) -> dict[str, str]:
    return DriverRunner(None, conf.driver, conf).environment()


def test_default_is_no_limit_of_its_own():
    conf = config.parse("")
    assert conf.driver_copy_max_mb == 0
    assert env_of(conf)["ONED_COPY_MAX_MB"] == "0"


def test_a_limit_reaches_the_scripts():
    conf = config.parse("DRIVER_COPY_MAX_MB = 2048")
    assert env_of(conf)["ONED_COPY_MAX_MB"] == "2048"


@pytest.mark.parametrize(("value", "why"), [
    ("-1", "expected 0 or a positive integer"),
    ("x", "invalid literal for int() with base 10: 'x'"),
    ("1.5", "invalid literal for int() with base 10: '1.5'"),
])
def test_bad_values_stop_start_up(value, why):
    with pytest.raises(ConfigError) as exc:
        config.parse(f"DRIVER_COPY_MAX_MB = {value}")
    assert str(exc.value) == f"<config>:1: DRIVER_COPY_MAX_MB: bad value '{value}': {why}"
