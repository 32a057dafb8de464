"""OPENNEBULA_CONFIGURATION for one.system.config, from the effective settings.

Only keys that opennebula_configuration.xsd knows are listed (our own keys such
as VAR_LOCATION or DRIVER_TIMEOUT would make the document invalid), and the
values are the effective ones, defaults included.  oned masks the DB fields of
callers outside group 0 with ``***``; that text is invalid for several of those
schema types, so we leave those fields out instead (TIMEOUT and CONNECTIONS stay).
"""

from __future__ import annotations

from oned_images.config import DaemonConfig
from oned_images.domain import vm_ops
from oned_images.template import Template

#: the DB keys oned replaces with *** for callers whose primary group is not 0.
DB_HIDDEN = ("BACKEND", "SERVER", "PORT", "USER", "PASSWD", "DB_NAME")


def configuration_xml(config: DaemonConfig, show_db: bool) -> str:
    t = Template()
    t.add("API_LIST_ORDER", config.api_list_order)
    t.add("DATASTORE_CAPACITY_CHECK", "yes" if config.datastore_capacity_check else "no")
    t.add("DATASTORE_LOCATION", config.datastore_location)
    allowed = ",".join(config.driver.allowed)
    t.add("DATASTORE_MAD", {"ARGUMENTS": f"-t {config.driver.concurrency} -d {allowed}",
                            "EXECUTABLE": "one_datastore"})
    db: dict[str, str] = {}
    if config.db.backend == "sqlite":
        db.update(BACKEND="sqlite", TIMEOUT=str(config.db.timeout_ms))
    else:
        # opennebula_configuration.xsd only knows mysql and sqlite: name no backend
        # rather than send a document the schema (and strict clients) reject.
        db.update(SERVER=config.db.server,
                  PORT=str(config.db.port), USER=config.db.user, PASSWD=config.db.passwd,
                  DB_NAME=config.db.db_name, CONNECTIONS=str(config.db.connections))
    if not show_db:
        for key in DB_HIDDEN:
            db.pop(key, None)
    t.add("DB", db)
    t.add("DEFAULT_CDROM_DEVICE_PREFIX", config.default_cdrom_device_prefix)
    t.add("DEFAULT_DEVICE_PREFIX", config.default_device_prefix)
    t.add("DEFAULT_IMAGE_PERSISTENT", config.default_image_persistent)
    t.add("DEFAULT_IMAGE_PERSISTENT_NEW", config.default_image_persistent_new)
    t.add("DEFAULT_IMAGE_TYPE", config.default_image_type)
    t.add("DEFAULT_UMASK", f"{config.default_umask:03o}")
    for conf in config.ds_mad_conf:
        vector = {
            "NAME": conf.name,
            "PERSISTENT_ONLY": "YES" if conf.persistent_only else "NO",
            "REQUIRED_ATTRS": ",".join(conf.required_attrs),
        }
        if conf.marketplace_actions:  # oned lists only what oned.conf sets
            vector["MARKETPLACE_ACTIONS"] = conf.marketplace_actions
        t.add("DS_MAD_CONF", vector)
    t.add("ENABLE_OTHER_PERMISSIONS", "YES" if config.enable_other_permissions else "NO")
    for attr in config.image_restricted_attr:
        t.add("IMAGE_RESTRICTED_ATTR", attr)
    t.add("LISTEN_ADDRESS", config.listen_address)
    t.add("LOG", {"DEBUG_LEVEL": str(config.log_debug_level), "SYSTEM": config.log_system})
    t.add("MESSAGE_SIZE", str(config.message_size))
    t.add("MONITORING_INTERVAL_DATASTORE", str(config.monitoring_interval_datastore))
    t.add("PORT", str(config.port))
    t.add("SESSION_EXPIRATION_TIME", str(config.session_expiration_time))
    known = {"ALLOW_ORPHANS", "CLONE_TARGET", "DISK_TYPE", "DRIVER", "DS_MIGRATE", "LN_TARGET",
             "NAME", "PERSISTENT_SNAPSHOTS", "SHARED", "TM_MAD_SYSTEM"}
    for tm in config.tm_mad_conf:
        t.add("TM_MAD_CONF", {k: v for k, v in tm.attrs.items() if k in known})
    for name, text in zip(vm_ops.ATTRIBUTES, config.vm_op_lists, strict=True):
        t.add(name, text)
    return t.to_xml("OPENNEBULA_CONFIGURATION")
