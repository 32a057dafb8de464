"""The daemon configuration: ``etc/oned-images.conf`` in oned.conf's grammar.

The file is read with the same template parser as image templates (multi mode,
so repeated vectors such as DS_MAD_CONF are kept).  Every key is declared in
:data:`KEYS`; an unknown key or a bad value stops start-up with the file, line
and key, because a silently ignored typo in a daemon config costs hours.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from oned_images.domain import vm_ops
from oned_images.model.settings import DbSettings, Limits
from oned_images.template import Attribute, Template, TemplateError

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_ROOT = PACKAGE_DIR.parent


def shipped(name: str) -> Path:
    """A file shipped with oned-images: package data in an installed wheel
    (oned_images/_data, see setup.py), the checkout's top directory otherwise."""
    packaged = PACKAGE_DIR / "_data" / name
    return packaged if packaged.exists() else PACKAGE_ROOT / name


DEFAULT_CONFIG_FILE = shipped("etc/oned-images.conf")
SHIPPED_DRIVERS = shipped("drivers")
#: the built Images page (web/dist, README "The Images page")
WEB_ROOT = shipped("web/dist")
SYSTEM_CONFIG_FILE = Path("/etc/one/oned-images.conf")


class ConfigError(Exception):
    pass


def _yes_no(value: str) -> bool:
    v = value.strip().upper()
    if v in ("YES", "TRUE", "1", "ON"):
        return True
    if v in ("NO", "FALSE", "0", "OFF"):
        return False
    raise ValueError("expected YES or NO")


def _int(value: str) -> int:
    return int(value.strip())


def _port(value: str) -> int:
    port = int(value.strip())
    if not 0 <= port <= 65535:
        raise ValueError("expected a port number 0-65535")
    return port


def _positive(value: str) -> int:
    n = int(value.strip())
    if n <= 0:
        raise ValueError("expected a positive integer")
    return n


def _non_negative(value: str) -> int:
    n = int(value.strip())
    if n < 0:
        raise ValueError("expected 0 or a positive integer")
    return n


def _octal(value: str) -> int:
    n = int(value.strip(), 8)
    if not 0 <= n <= 0o777:
        raise ValueError("expected an octal umask 000-777")
    return n


def _image_type(value: str) -> str:
    v = value.strip().upper()
    # oned only accepts these three as a default and falls back to OS otherwise.
    return v if v in ("OS", "CDROM", "DATABLOCK") else "OS"


def _order(value: str) -> str:
    v = value.strip().upper()
    if v not in ("ASC", "DESC"):
        raise ValueError("expected ASC or DESC")
    return v


def _text(value: str) -> str:
    return value


def _metrics(value: str) -> str:
    v = value.strip().lower()
    v = {"yes": "on", "no": "off"}.get(v, v)
    if v not in ("on", "off", "loopback"):
        raise ValueError("expected on, off or loopback")
    return v


@dataclass(frozen=True)
class DsMadConf:
    name: str
    required_attrs: tuple[str, ...] = ()
    persistent_only: bool = False
    marketplace_actions: str = ""
    #: how scripts are called: "stdin" (OpenNebula >= 6.8) or "argv" (<= 6.6).
    mode: str = "stdin"


@dataclass(frozen=True)
class TmMadConf:
    name: str
    attrs: dict[str, str]


#: oned's built-in TM_MAD_CONF (OpenNebulaTemplate::set_multiple_conf_default): a driver
#: the file does not configure gets these, with the values of oned 7.0's stock oned.conf,
#: so a minimal file still gives datastores what oned gives them.
BUILTIN_TM_MAD_CONF = (
    TmMadConf("dummy", {"NAME": "dummy", "LN_TARGET": "NONE", "CLONE_TARGET": "SYSTEM",
                        "SHARED": "YES", "DS_MIGRATE": "YES"}),
    TmMadConf("local", {"NAME": "local", "LN_TARGET": "SYSTEM", "CLONE_TARGET": "SYSTEM",
                        "SHARED": "NO", "DS_MIGRATE": "YES", "ALLOW_ORPHANS": "FORMAT"}),
    TmMadConf("shared", {"NAME": "shared", "LN_TARGET": "NONE", "CLONE_TARGET": "SYSTEM",
                         "SHARED": "YES", "DS_MIGRATE": "YES", "ALLOW_ORPHANS": "FORMAT",
                         "TM_MAD_SYSTEM": "ssh", "LN_TARGET_SSH": "SYSTEM",
                         "CLONE_TARGET_SSH": "SYSTEM", "DISK_TYPE_SSH": "FILE"}),
    TmMadConf("qcow2", {"NAME": "qcow2", "LN_TARGET": "NONE", "CLONE_TARGET": "SYSTEM",
                        "SHARED": "YES", "DS_MIGRATE": "YES", "DRIVER": "qcow2",
                        "ALLOW_ORPHANS": "FORMAT", "TM_MAD_SYSTEM": "ssh",
                        "LN_TARGET_SSH": "SYSTEM", "CLONE_TARGET_SSH": "SYSTEM",
                        "DISK_TYPE_SSH": "FILE"}),
)


#: the DS_MAD_CONF a driver this daemon ships gets when the file has none for it (oned
#: 7.0's built-in values for both); any other DS_MAD needs a DS_MAD_CONF in the file.
BUILTIN_DS_MAD_CONF = (DsMadConf("dummy"), DsMadConf("fs"))


@dataclass(frozen=True)
class DriverSettings:
    """DATASTORE_MAD: what oned passes to one_datastore as -t / -d / -w."""

    concurrency: int = 15
    allowed: tuple[str, ...] = ("dummy", "fs")
    timeouts: dict[str, int] = field(default_factory=lambda: {"stat": 90, "monitor": 120})
    remotes: str = str(SHIPPED_DRIVERS)
    kill_grace: int = 5
    #: nice level of driver scripts (oned's defaultrc PRIORITY): copies must not
    #: starve the daemon that answers the API.
    priority: int = 19
    #: actions one user may run at once (0: half of ``concurrency``, at least 1)
    user_share: int = 0


@dataclass(frozen=True)
class TmSettings:
    """TM_MAD: what oned passes to one_tm.  ``allowed`` is the ``-d`` list (None: every
    driver directory under ``<REMOTES>/tm``); ``timeout`` (``-w``, seconds, 0 = the
    defaults of driver/tm.py) limits every TM action, copies included."""

    allowed: tuple[str, ...] | None = None
    timeout: int = 0


@dataclass(frozen=True)
class DaemonConfig:
    port: int = 2633
    listen_address: str = "0.0.0.0"
    var_location: str = ""
    datastore_location: str = ""
    db: DbSettings = field(default_factory=DbSettings)
    message_size: int = 1073741824
    #: HTTP_LIMITS: request deadlines and connection limits of the endpoint.
    http_limits: Limits = field(default_factory=Limits)
    session_expiration_time: int = 900
    default_umask: int = 0o177
    enable_other_permissions: bool = True
    default_image_type: str = "OS"
    default_device_prefix: str = "sd"
    default_cdrom_device_prefix: str = "hd"
    image_restricted_attr: tuple[str, ...] = ("SOURCE",)
    datastore_capacity_check: bool = True
    monitoring_interval_datastore: int = 300
    api_list_order: str = "DESC"
    #: VM_ADMIN/MANAGE/USE_OPERATIONS as written (a key left out keeps the list
    #: OpenNebula 7.0's oned.conf ships); ``vm_ops`` is what they say
    vm_op_lists: tuple[str, str, str] = (vm_ops.DEFAULT_ADMIN, vm_ops.DEFAULT_MANAGE,
                                         vm_ops.DEFAULT_USE)
    default_image_persistent: str = ""
    default_image_persistent_new: str = ""
    driver: DriverSettings = field(default_factory=DriverSettings)
    tm: TmSettings = field(default_factory=TmSettings)
    #: seconds without a byte before a driver's transfer fails (ONED_STALL_TIMEOUT)
    driver_stall_timeout: int = 60
    #: MiB a copy (cp) may write, decompressed (ONED_COPY_MAX_MB; 0 = only the
    #: datastore's space bounds it)
    driver_copy_max_mb: int = 0
    ds_mad_conf: tuple[DsMadConf, ...] = ()
    tm_mad_conf: tuple[TmMadConf, ...] = ()
    log_system: str = "file"
    log_debug_level: int = 3
    #: GET /metrics: "on", "off" or "loopback" (127.0.0.0/8 and ::1 peers only).
    metrics: str = "loopback"
    #: tus uploads at /uploads/ and GET /api/progress (README "Uploads and progress").
    uploads: bool = True
    #: where uploads are staged (empty: VAR_LOCATION/uploads); always protected.
    upload_staging_dir: str = ""
    #: largest upload, staging space per user and in total (MB); expiry (seconds).
    upload_max_mb: int = 65536
    upload_user_mb: int = 65536
    upload_total_mb: int = 262144
    upload_expiration: int = 86400
    #: the Images page at / (rpc/web.py); NO: / answers as before (405/404).
    web_page: bool = True
    #: this daemon's name among those on one database (empty: host name:port).
    daemon_name: str = ""
    #: seconds a dead daemon's driver work waits before another daemon takes it over.
    daemon_lease: int = 30
    #: accept processes sharing the port (oned_images/workers.py); 1: this process serves.
    workers: int = 1
    #: which of them this process is (0: not a worker); its run-time files are its own.
    worker: int = 0
    source_file: str = ""
    #: why source_file was read (--config, $ONE_LOCATION, /etc/one, packaged default).
    source_why: str = ""
    #: the parsed template, for one.system.config.
    raw: Template = field(default_factory=Template)

    def ds_mad(self, name: str) -> DsMadConf:
        for conf in self.ds_mad_conf:
            if conf.name == name:
                return conf
        return DsMadConf(name)

    def ds_mad_defined(self, name: str) -> bool:
        """oned's get_ds_conf_attribute: a DS_MAD_CONF names this driver."""
        return any(conf.name == name for conf in self.ds_mad_conf)

    def tm_mad(self, name: str) -> dict[str, str]:
        for conf in self.tm_mad_conf:
            if conf.name == name:
                return conf.attrs
        return {}

    @functools.cached_property
    def vm_ops(self) -> vm_ops.OpClasses:
        """The right each VM operation needs, by this configuration (checked at parse)."""
        return vm_ops.OpClasses.parse(*self.vm_op_lists)

    @property
    def db_path(self) -> str:
        return self.db.path or os.path.join(self.var_location, "one.db")

    @property
    def staging_dir(self) -> str:
        return self.upload_staging_dir or os.path.join(self.var_location, "uploads")

    @staticmethod
    def is_worker_dir(name: str) -> bool:
        """A worker's own directory name under run/ or the upload staging: ``w<k>``."""
        return re.fullmatch(r"w[1-9][0-9]*", name) is not None

    @property
    def run_location(self) -> str:
        """Driver pid records, action TMPDIRs, TM journals: one process's own."""
        run = os.path.join(self.var_location, "run")
        return os.path.join(run, f"w{self.worker}") if self.worker else run

    @property
    def log_file(self) -> str:
        return os.path.join(self.var_location, "oned.log")


SCALARS: dict[str, tuple[str, Callable[[str], object]]] = {
    "PORT": ("port", _port),
    "LISTEN_ADDRESS": ("listen_address", _text),
    "VAR_LOCATION": ("var_location", _text),
    "DATASTORE_LOCATION": ("datastore_location", _text),
    "MESSAGE_SIZE": ("message_size", _positive),
    "SESSION_EXPIRATION_TIME": ("session_expiration_time", _int),
    "DEFAULT_UMASK": ("default_umask", _octal),
    "ENABLE_OTHER_PERMISSIONS": ("enable_other_permissions", _yes_no),
    "DEFAULT_IMAGE_TYPE": ("default_image_type", _image_type),
    "DEFAULT_DEVICE_PREFIX": ("default_device_prefix", _text),
    "DEFAULT_CDROM_DEVICE_PREFIX": ("default_cdrom_device_prefix", _text),
    "DATASTORE_CAPACITY_CHECK": ("datastore_capacity_check", _yes_no),
    "MONITORING_INTERVAL_DATASTORE": ("monitoring_interval_datastore", _positive),
    "API_LIST_ORDER": ("api_list_order", _order),
    "DEFAULT_IMAGE_PERSISTENT": ("default_image_persistent", _text),
    "DEFAULT_IMAGE_PERSISTENT_NEW": ("default_image_persistent_new", _text),
    "DRIVER_STALL_TIMEOUT": ("driver_stall_timeout", _int),
    "DRIVER_COPY_MAX_MB": ("driver_copy_max_mb", _non_negative),
    "METRICS": ("metrics", _metrics),
    "UPLOADS": ("uploads", _yes_no),
    "UPLOAD_STAGING_DIR": ("upload_staging_dir", _text),
    "UPLOAD_MAX_MB": ("upload_max_mb", _positive),
    "UPLOAD_USER_MB": ("upload_user_mb", _positive),
    "UPLOAD_TOTAL_MB": ("upload_total_mb", _positive),
    "UPLOAD_EXPIRATION": ("upload_expiration", _positive),
    "WEB_PAGE": ("web_page", _yes_no),
    "DAEMON_NAME": ("daemon_name", _text),
    "DAEMON_LEASE": ("daemon_lease", _positive),
    "WORKERS": ("workers", _positive),
}
MULTI = ("IMAGE_RESTRICTED_ATTR",)

DB_KEYS = {"BACKEND", "SERVER", "PORT", "USER", "PASSWD", "DB_NAME", "CONNECTIONS", "TIMEOUT", "PATH"}
LOG_KEYS = {"SYSTEM", "DEBUG_LEVEL"}
DRIVER_KEYS = {"EXECUTABLE", "ARGUMENTS", "REMOTES", "KILL_GRACE", "PRIORITY", "USER_SHARE"}
HTTP_LIMIT_KEYS = {"HEADER_TIMEOUT": "header_timeout", "BODY_TIMEOUT": "body_timeout",
                   "BODY_MIN_RATE": "body_min_rate", "MAX_CONN_PER_PEER": "max_per_peer",
                   "MAX_CONN": "max_total"}
DS_MAD_KEYS = {"NAME", "REQUIRED_ATTRS", "PERSISTENT_ONLY", "MARKETPLACE_ACTIONS", "MODE"}
ACTIONS = ("cp", "mkfs", "clone", "rm", "stat", "monitor", "snap_delete", "snap_revert",
           "snap_flatten")


def _fail(src: str, attr: Attribute, what: str) -> ConfigError:
    return ConfigError(f"{src}:{attr.line}: {attr.name}: {what}")


def _vector(src: str, attr: Attribute, allowed: set[str]) -> dict[str, str]:
    if not isinstance(attr.value, dict):
        raise _fail(src, attr, "expected a vector attribute [ KEY = value, ... ]")
    unknown = sorted(set(attr.value) - allowed)
    if unknown:
        raise _fail(src, attr, f"unknown key {unknown[0]} (known: {', '.join(sorted(allowed))})")
    return attr.value


def _arguments(src: str, attr: Attribute, vec: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A driver's ARGUMENTS as (option, value) pairs, in order (a word without its value
    fails where it stands, after the options before it were read)."""
    try:
        words = shlex.split(vec.get("ARGUMENTS", ""))
    except ValueError as exc:
        raise _fail(src, attr, f"ARGUMENTS: {exc}") from None
    it = iter(words)
    for word in it:
        value = next(it, None)
        if value is None:
            raise _fail(src, attr, f"ARGUMENTS: {word} needs a value")
        yield word, value


def _positive_option(src: str, attr: Attribute, word: str, value: str) -> int:
    try:
        return _positive(value)
    except ValueError:
        raise _fail(src, attr, f"ARGUMENTS: {word} expects a positive integer") from None


def _names(value: str) -> tuple[str, ...]:
    """-d drv1,drv2: the driver names, blanks dropped."""
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _driver_settings(src: str, attr: Attribute, vec: dict[str, str],
                     base: DriverSettings) -> DriverSettings:
    concurrency, allowed, timeouts = base.concurrency, base.allowed, dict(base.timeouts)
    for word, value in _arguments(src, attr, vec):
        if word == "-t":
            concurrency = _positive_option(src, attr, word, value)
        elif word == "-d":
            allowed = _names(value)
        elif word == "-w":
            wait = _positive_option(src, attr, word, value)
            timeouts = {a: wait for a in ACTIONS} | {"stat": min(wait, 90)}
        elif word == "-s":
            pass  # system-datastore TM drivers: no system datastore monitoring here
        else:
            raise _fail(src, attr, f"ARGUMENTS: unknown option {word}")
    remotes = vec.get("REMOTES", base.remotes) or base.remotes
    try:
        grace = _positive(vec.get("KILL_GRACE", str(base.kill_grace)))
    except ValueError:
        raise _fail(src, attr, "KILL_GRACE expects a positive integer") from None
    try:
        priority = int(vec.get("PRIORITY", str(base.priority)))
    except ValueError:
        priority = 99
    if not 0 <= priority <= 19:
        raise _fail(src, attr, "PRIORITY expects a nice level 0-19")
    try:
        share = int(vec.get("USER_SHARE", str(base.user_share)) or "0")
    except ValueError:
        share = -1
    if share < 0:
        raise _fail(src, attr, "USER_SHARE expects a number of actions (0 = half of -t)")
    return DriverSettings(concurrency, allowed, timeouts, remotes, grace, priority, share)


def _tm_settings(src: str, attr: Attribute, vec: dict[str, str]) -> TmSettings:
    """TM_MAD ARGUMENTS: -d (drivers allowed), -w (timeout of every action); -t is
    accepted and ignored (TM actions share DATASTORE_MAD's -t slots)."""
    allowed, timeout = None, 0
    for word, value in _arguments(src, attr, vec):
        if word == "-d":
            allowed = _names(value)
        elif word in ("-w", "-t"):
            number = _positive_option(src, attr, word, value)
            if word == "-w":
                timeout = number
        else:
            raise _fail(src, attr, f"ARGUMENTS: unknown option {word}")
    return TmSettings(allowed, timeout)


def find_config(path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(file, why) in oned's order: --config, $ONE_LOCATION/etc, /etc/one, then the
    configuration shipped with oned-images, so an install works with no file of its own."""
    if path:
        return Path(path), "--config"
    one_location = os.environ.get("ONE_LOCATION")
    if one_location:
        candidate = Path(one_location) / "etc" / "oned-images.conf"
        if candidate.exists():
            return candidate, "$ONE_LOCATION"
    if SYSTEM_CONFIG_FILE.exists():
        return SYSTEM_CONFIG_FILE, "system"
    return DEFAULT_CONFIG_FILE, "packaged default"


def load(path: str | os.PathLike | None = None) -> DaemonConfig:
    """Read the configuration file found by :func:`find_config`."""
    found, why = find_config(path)
    src = str(found)
    try:
        text = found.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{src}: cannot read: {exc.strerror}") from None
    return dataclasses.replace(parse(text, src), source_why=why)


def parse(text: str, src: str = "<config>") -> DaemonConfig:
    try:
        tmpl = Template.parse(text, replace_mode=False)
    except TemplateError as exc:
        raise ConfigError(f"{src}:{exc.line or 0}: {exc.message}") from None
    values: dict[str, object] = {}
    db = DbSettings()
    driver = DriverSettings()
    ds_confs: list[DsMadConf] = []
    tm_confs: list[TmMadConf] = []
    restricted: list[str] = []
    log_system, log_level = "file", 3
    op_lists = dict(zip(vm_ops.ATTRIBUTES, DaemonConfig.vm_op_lists, strict=True))
    for attr in tmpl:
        name = attr.name
        if name in op_lists:
            if isinstance(attr.value, dict):
                raise _fail(src, attr, "expected a single value, not a vector")
            try:
                vm_ops.operations(attr.value)
            except vm_ops.UnknownOperation as exc:
                raise _fail(src, attr, f"{exc} (known: {', '.join(vm_ops.WORDS)})") from None
            op_lists[name] = attr.value
        elif name in SCALARS:
            if isinstance(attr.value, dict):
                raise _fail(src, attr, "expected a single value, not a vector")
            field_name, conv = SCALARS[name]
            try:
                values[field_name] = conv(attr.value)
            except ValueError as exc:
                raise _fail(src, attr, f"bad value {attr.value!r}: {exc}") from None
        elif name in MULTI:
            if isinstance(attr.value, dict):
                raise _fail(src, attr, "expected a single value, not a vector")
            if attr.value.upper() not in restricted:
                restricted.append(attr.value.upper())
        elif name == "DB":
            vec = _vector(src, attr, DB_KEYS)
            backend = vec.get("BACKEND", "sqlite").lower()
            if backend not in ("sqlite", "postgresql"):
                raise _fail(src, attr, f"BACKEND must be sqlite or postgresql, not {backend!r}")
            try:
                db = DbSettings(
                    backend=backend,
                    path=vec.get("PATH", ""),
                    server=vec.get("SERVER", "localhost"),
                    port=_port(vec.get("PORT", "5432") or "5432"),
                    user=vec.get("USER", "oneadmin"),
                    passwd=vec.get("PASSWD", ""),
                    db_name=vec.get("DB_NAME", "opennebula"),
                    connections=_positive(vec.get("CONNECTIONS", "4")),
                    timeout_ms=_positive(vec.get("TIMEOUT", "2500")),
                )
            except ValueError as exc:
                raise _fail(src, attr, f"bad value: {exc}") from None
        elif name == "LOG":
            vec = _vector(src, attr, LOG_KEYS)
            log_system = vec.get("SYSTEM", "file").lower()
            if log_system not in ("file", "std"):
                raise _fail(src, attr, "SYSTEM must be file or std")
            try:
                log_level = int(vec.get("DEBUG_LEVEL", "3"))
            except ValueError:
                raise _fail(src, attr, "DEBUG_LEVEL must be 0-5") from None
            if not 0 <= log_level <= 5:
                raise _fail(src, attr, "DEBUG_LEVEL must be 0-5")
        elif name == "HTTP_LIMITS":
            vec = _vector(src, attr, set(HTTP_LIMIT_KEYS))
            try:
                values["http_limits"] = Limits(**{HTTP_LIMIT_KEYS[k]: _positive(v)
                                                  for k, v in vec.items()})
            except ValueError:
                raise _fail(src, attr, "every limit must be a positive integer") from None
        elif name == "DATASTORE_MAD":
            driver = _driver_settings(src, attr, _vector(src, attr, DRIVER_KEYS), driver)
        elif name == "TM_MAD":
            values["tm"] = _tm_settings(src, attr, _vector(src, attr, {"EXECUTABLE",
                                                                        "ARGUMENTS"}))
        elif name == "DRIVER_TIMEOUT":
            vec = _vector(src, attr, {a.upper() for a in ACTIONS})
            timeouts = dict(driver.timeouts)
            for key, val in vec.items():
                try:
                    secs = int(val)
                except ValueError:
                    raise _fail(src, attr, f"{key} must be seconds (0 = none)") from None
                if secs <= 0:
                    timeouts.pop(key.lower(), None)
                else:
                    timeouts[key.lower()] = secs
            driver = replace(driver, timeouts=timeouts)
        elif name == "DS_MAD_CONF":
            vec = _vector(src, attr, DS_MAD_KEYS)
            if not vec.get("NAME"):
                raise _fail(src, attr, "NAME is required")
            mode = vec.get("MODE", "stdin").lower()
            if mode not in ("stdin", "argv"):
                raise _fail(src, attr, "MODE must be stdin or argv")
            try:
                persistent_only = _yes_no(vec.get("PERSISTENT_ONLY", "NO") or "NO")
            except ValueError:
                raise _fail(src, attr, "PERSISTENT_ONLY must be YES or NO") from None
            ds_confs.append(DsMadConf(
                name=vec["NAME"],
                required_attrs=tuple(
                    a.strip() for a in vec.get("REQUIRED_ATTRS", "").split(",") if a.strip()
                ),
                persistent_only=persistent_only,
                marketplace_actions=vec.get("MARKETPLACE_ACTIONS", ""),
                mode=mode,
            ))
        elif name == "TM_MAD_CONF":
            if not isinstance(attr.value, dict) or not attr.value.get("NAME"):
                raise _fail(src, attr, "expected a vector with NAME")
            tm_confs.append(TmMadConf(attr.value["NAME"], dict(attr.value)))
        else:
            raise _fail(src, attr, "unknown configuration key")
    var = str(values.get("var_location") or default_var_location())
    values["var_location"] = var
    if not values.get("datastore_location"):
        # oned builds BASE_PATH as var + "/datastores": keep its double-slash habit out.
        values["datastore_location"] = os.path.join(var, "datastores")
    configured = {conf.name for conf in tm_confs}
    tm_confs += [conf for conf in BUILTIN_TM_MAD_CONF if conf.name not in configured]
    configured = {conf.name for conf in ds_confs}
    ds_confs += [conf for conf in BUILTIN_DS_MAD_CONF if conf.name not in configured]
    return DaemonConfig(
        db=db, driver=driver, ds_mad_conf=tuple(ds_confs), tm_mad_conf=tuple(tm_confs),
        image_restricted_attr=tuple(restricted) if restricted else ("SOURCE",),
        log_system=log_system, log_debug_level=log_level, source_file=src, raw=tmpl,
        vm_op_lists=tuple(op_lists.values()),  # type: ignore[arg-type]
        **values,  # type: ignore[arg-type]
    )


def default_var_location() -> str:
    """$ONE_LOCATION/var as oned, else a per-user data directory."""
    one_location = os.environ.get("ONE_LOCATION")
    if one_location:
        return os.path.join(one_location, "var")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "share")
    return os.path.join(base, "oned-images")
