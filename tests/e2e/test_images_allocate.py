"""one.image.allocate end to end: every check of api.md §2.1 in oned's order, the
attribute processing of §6, and the state right after the call."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pyone
import pytest

from tests.support.seed import (
    dummy_datastore as make_dummy,
)
from tests.support.seed import (
    fails,
    fault,
    field,
    info,
    num,
    ok,
    parse,
    register,
    section,
    template_dict,
    unique,
    user,
    wait_gone,
    wait_state,
)

M = "one.image.allocate"


@pytest.fixture(scope="module")
def ds(daemon):
    return make_dummy(daemon, "alloc-dummy")


@pytest.fixture(scope="module")
def small_ds(daemon):
    """LIMIT_MB=1 with USED_MB 9720 from the dummy monitor: nothing fits."""
    return make_dummy(daemon, "alloc-small", 'LIMIT_MB="1"\n')


# ------------------------------------------------------------ step 1: parse errors
def test_text_parse_error_is_internal_with_bison_text(daemon):
    assert fails(daemon, M, 'NAME="x" = = ', 1) == (
        "[one.image.allocate] Parse error: syntax error, unexpected EQUAL, expecting $end "
        "at line 0, columns 9:12", 8192, -1)


def test_parse_error_comes_before_the_datastore_lookup(daemon):
    assert fails(daemon, M, 'NAME="x" = = ', 999)[0].startswith(
        "[one.image.allocate] Parse error: ")
    assert fails(daemon, M, "<IMAGE><NAME>x</IMAGE>", 999) == (
        "[one.image.allocate] Parse error: XML Template malformed.", 8192, -1)


def test_value_with_cdata_end_is_refused_in_text_form(daemon):
    assert fails(daemon, M, 'NAME="x"\nDESCRIPTION="a]]>b"', 1) == (
        "[one.image.allocate] Parse error.", 8192, -1)


# ------------------------------------------------------------ steps 2-3: datastore
def test_missing_datastore(daemon):
    assert fails(daemon, M, 'NAME="x"\nPATH="/var/tmp/x"', 999) == (
        "[one.image.allocate] Error getting datastore [999].", 1024, 999)
    assert fails(daemon, M, 'NAME="x"\nPATH="/var/tmp/x"', -1) == (
        "[one.image.allocate] Error getting datastore Pool.", 1024, -1)


def test_system_datastore_refused_for_admin_and_user(daemon):
    text = 'NAME="x"\nSOURCE="/var/tmp/x"\nFORMAT="raw"\nSIZE="1"'
    expected = ("[one.image.allocate] Error allocating a new image. New images can only be "
                "allocated in a files or image datastore.", 16384, -1)
    assert fails(daemon, M, text, 0) == expected
    _, session = user(daemon)
    # the type check precedes authorization: a user gets the same text
    assert fails(daemon, M, text, 0, session=session) == expected


def test_backup_datastore_refused(daemon):
    bds = ok(daemon, "one.datastore.allocate",
             'NAME="alloc-backup"\nTYPE="BACKUP_DS"\nDS_MAD="dummy"\nTM_MAD="-"', -1)
    assert fails(daemon, M, 'NAME="b"\nTYPE="BACKUP"\nSOURCE="/x"\nFORMAT="raw"\nSIZE="1"',
                 bds) == (
        "[one.image.allocate] Error allocating a new image. New images can only be "
        "allocated in a files or image datastore.", 16384, -1)


# ------------------------------------------------------------ step 4: size probe
@pytest.mark.parametrize("text,detail", [
    ('NAME="s1"\nSOURCE="/var/tmp/s1"\nFORMAT="raw"',
     "Wrong number or missing SIZE attribute."),
    # SOURCE and PATH without SIZE: the probe fails before the PATH/SOURCE rule
    ('NAME="s2"\nSOURCE="/var/tmp/s2"\nPATH="/var/tmp/p"',
     "Wrong number or missing SIZE attribute."),
    ('NAME="s3"\nTYPE="DATABLOCK"\nSIZE="10G"', "Wrong number or missing SIZE attribute."),
    ('NAME="s4"\nTYPE="DATABLOCK"', "Wrong number or missing SIZE attribute."),
    ('NAME="s5"\nTYPE="CDROM"', "Either PATH or SOURCE are required for CDROM"),
    ('NAME="s6"\nTYPE="cdrom"\nSIZE="5"', "Either PATH or SOURCE are required for CDROM"),
])
def test_size_probe_errors(daemon, ds, text, detail):
    assert fails(daemon, M, text, ds) == (
        f"[one.image.allocate] Cannot parse image SIZE: {detail}", 8192, -1)


def test_size_probe_for_file_types(daemon):
    assert fails(daemon, M, 'NAME="k"\nTYPE="KERNEL"', 2) == (
        "[one.image.allocate] Cannot parse image SIZE: Either PATH or SOURCE are required "
        "for KERNEL", 8192, -1)


def test_path_outside_safe_dirs_is_refused_synchronously(daemon, ds):
    assert fails(daemon, M, 'NAME="etc"\nPATH="/etc/passwd"', ds) == (
        "[one.image.allocate] Cannot parse image SIZE: Not allowed to copy image file "
        "/etc/passwd: it is not under the datastore SAFE_DIRS and is under its "
        "RESTRICTED_DIRS", 8192, -1)
    # ".." cannot climb out of a safe dir
    assert fails(daemon, M, 'NAME="etc"\nPATH="/var/tmp/../../etc/passwd"', ds)[0].endswith(
        "Not allowed to copy image file /var/tmp/../../etc/passwd: it is not under the "
        "datastore SAFE_DIRS and is under its RESTRICTED_DIRS")


def test_path_image_size_comes_from_stat_not_template(daemon, ds):
    oid = ok(daemon, M, 'NAME="statted"\nPATH="/var/tmp/statted.img"\nSIZE="3"', ds)
    xml = wait_state(daemon, oid, 1)
    assert num(xml, "SIZE") == 1024


# ------------------------------------------------------------ step 5: capacity
def test_capacity_check_with_limit_mb(daemon, small_ds):
    text = f'NAME="{unique()}"\nTYPE="DATABLOCK"\nSIZE="5"'
    expected = ("[one.image.allocate] Not enough space in datastore", 2048, -1)
    assert fails(daemon, M, text, small_ds) == expected
    assert fails(daemon, M, text, small_ds, False) == expected
    # a path image: the STAT size (1024) is checked
    assert fails(daemon, M, 'NAME="p"\nPATH="/var/tmp/p.img"', small_ds) == expected


def test_admin_can_skip_the_capacity_check(daemon, small_ds):
    oid = ok(daemon, M, f'NAME="{unique()}"\nTYPE="DATABLOCK"\nSIZE="5"', small_ds, True)
    assert num(wait_state(daemon, oid, 1), "SIZE") == 5


def test_user_capacity_flag_ignored_and_not_type_checked(daemon, small_ds):
    _, session = user(daemon)
    text = f'NAME="{unique()}"\nTYPE="DATABLOCK"\nSIZE="5"'
    expected = ("[one.image.allocate] Not enough space in datastore", 2048, -1)
    assert fails(daemon, M, text, small_ds, True, session=session) == expected
    assert fails(daemon, M, text, small_ds, "not a bool", session=session) == expected


def test_admin_capacity_flag_is_type_checked(daemon, ds):
    assert fault(daemon, M, 'NAME="x"\nTYPE="DATABLOCK"\nSIZE="1"', ds, "yes") == (
        -501, "Parameter that is supposed to be boolean is not")


def test_zero_size_fits_even_a_full_datastore(daemon, small_ds):
    oid = ok(daemon, M, f'NAME="{unique()}"\nTYPE="DATABLOCK"\nSIZE="0"', small_ds)
    assert num(wait_state(daemon, oid, 1), "SIZE") == 0


# ------------------------------------------------------------ steps 7-8: authorization
def test_restricted_source_for_non_admin(daemon, ds):
    uid, session = user(daemon)
    text = 'NAME="r"\nSOURCE="/var/tmp/r"\nFORMAT="raw"\nSIZE="1"'
    assert fails(daemon, M, text, ds, session=session) == (
        f"[one.image.allocate] User [{uid}] : Template includes a restricted attribute "
        "SOURCE.", 512, -1)
    # the probe runs first: without SIZE the SIZE text wins
    assert fails(daemon, M, 'NAME="r"\nSOURCE="/var/tmp/r"', ds, session=session) == (
        "[one.image.allocate] Cannot parse image SIZE: Wrong number or missing SIZE "
        "attribute.", 8192, -1)


def test_user_outside_users_group_cannot_create(daemon, ds):
    # a new group joins the default VDC (USE on every datastore) but only "users" has
    # the CREATE rule (ACL 0)
    gid = ok(daemon, "one.group.allocate", unique("nogroup"))
    uid, session = user(daemon, groups=[gid])
    text = 'NAME="denied"\nTYPE="DATABLOCK"\nSIZE="1"'
    for target in (1, ds):
        assert fails(daemon, M, text, target, session=session) == (
            f"[one.image.allocate] User [{uid}] : Not authorized to perform CREATE IMAGE.",
            512, -1)


def test_users_member_allocates_with_default_permissions(daemon, ds):
    uid, session = user(daemon, name=unique("alice"))
    oid = ok(daemon, M, 'NAME="mine"\nTYPE="DATABLOCK"\nSIZE="2"', ds, session=session)
    xml = wait_state(daemon, oid, 1)
    assert (num(xml, "UID"), num(xml, "GID"), field(xml, "GNAME")) == (uid, 1, "users")
    assert field(xml, "UNAME") == session.split(":")[0]
    assert section(xml, "PERMISSIONS") == (
        "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
        "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U>"
        "<OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>")


def test_user_umask_applies(daemon, ds):
    uid, session = user(daemon)
    ok(daemon, "one.user.update", uid, 'UMASK="117"', 1)
    oid = ok(daemon, M, 'NAME="umasked"\nTYPE="DATABLOCK"\nSIZE="1"', ds, session=session)
    perms = [int(e.text) for e in parse(info(daemon, oid)).find("PERMISSIONS")]
    assert perms == [1, 1, 0, 1, 1, 0, 0, 0, 0]


# ------------------------------------------------------------ step 10: persistence
@pytest.mark.parametrize("value,expected", [
    ("YES", 1), ("yes", 1), ("Yes", 1), ("NO", 0), ("true", 0), ("1", 0), ("", 0),
])
def test_persistent_only_yes_means_true(daemon, ds, value, expected):
    oid = register(daemon, ds, extra=f'PERSISTENT="{value}"\n')
    xml = info(daemon, oid)
    assert num(xml, "PERSISTENT") == expected
    assert "PERSISTENT" not in template_dict(xml)


def test_persistent_default_from_user_template(daemon, ds):
    uid, session = user(daemon)
    text = 'NAME="{}"\nTYPE="DATABLOCK"\nSIZE="1"'
    plain = ok(daemon, M, text.format("p0"), ds, session=session)
    ok(daemon, "one.user.update", uid, 'OPENNEBULA=[ DEFAULT_IMAGE_PERSISTENT_NEW="YES" ]', 1)
    persistent = ok(daemon, M, text.format("p1"), ds, session=session)
    explicit = ok(daemon, M, text.format("p2") + '\nPERSISTENT="NO"', ds, session=session)
    assert [num(info(daemon, i), "PERSISTENT") for i in (plain, persistent, explicit)] == [
        0, 1, 0]


def test_shareable_type_dropped_only_for_non_persistent(daemon, ds):
    a = register(daemon, ds, extra='PERSISTENT_TYPE="shareable"\n')
    b = register(daemon, ds, extra='PERSISTENT_TYPE="SHAREABLE"\nPERSISTENT="YES"\n')
    assert "PERSISTENT_TYPE" not in template_dict(info(daemon, a))
    assert template_dict(info(daemon, b))["PERSISTENT_TYPE"] == "SHAREABLE"


def test_file_types_never_persistent(daemon):
    oid = register(daemon, 2, extra='TYPE="KERNEL"\nPERSISTENT="YES"\nDEV_PREFIX="vd"\n')
    xml = info(daemon, oid)
    assert (num(xml, "TYPE"), num(xml, "PERSISTENT"), num(xml, "STATE")) == (3, 0, 1)
    assert section(xml, "TEMPLATE") == "<TEMPLATE></TEMPLATE>"


def test_persistent_only_datastore(fresh_daemon):
    d = fresh_daemon(extra_config='DS_MAD_CONF = [ NAME = "ponly", PERSISTENT_ONLY = "YES" ]\n')
    # no "ponly" driver: never monitored, so no capacity check (SOURCE needs no driver)
    ds = ok(d, "one.datastore.allocate", 'NAME="ponly"\nDS_MAD="ponly"\nTM_MAD="dummy"\n'
            'DATASTORE_CAPACITY_CHECK="NO"', -1)
    text = 'NAME="{}"\nSOURCE="/var/tmp/x"\nFORMAT="raw"\nSIZE="1"\n'
    assert fails(d, M, text.format("np"), ds) == (
        "[one.image.allocate] Error allocating a new image. This Datastore only accepts "
        "persistent images.", 16384, -1)
    oid = ok(d, M, text.format("p") + 'PERSISTENT="YES"', ds)
    assert num(info(d, oid), "PERSISTENT") == 1
    assert fails(d, "one.image.persistent", oid, False) == (
        "[one.image.persistent] This Datastore only accepts persistent images.", 8192, -1)
    # unchanged flag: success without any check
    assert ok(d, "one.image.persistent", oid, True) == oid


# ------------------------------------------------------------ step 11: insert rules
@pytest.mark.parametrize("name,detail", [
    ("a:b", "Invalid NAME, char ':' is not allowed"),
    ("a/b", "Invalid NAME, char '/' is not allowed"),
    ("a$b", "Invalid NAME, char '$' is not allowed"),
    ("a'b", "Invalid NAME, char ''' is not allowed"),
    ("a{b", "Invalid NAME, char '{' is not allowed"),
    ("a#b", "Invalid NAME, char '#' is not allowed"),
    ("a\tb", "Invalid NAME, char '\t' is not allowed"),
    ("", "Invalid NAME, it cannot be empty"),
    ("   ", "Invalid NAME, it cannot be empty"),
    ("n" * 129, "Invalid NAME, max length is 128 chars"),
    ("é" * 65, "Invalid NAME, max length is 128 chars"),
])
def test_invalid_names(daemon, ds, name, detail):
    text = f'NAME="{name}"\nSOURCE="/var/tmp/x"\nFORMAT="raw"\nSIZE="1"'
    assert fails(daemon, M, text, ds) == (
        f"[one.image.allocate] Error allocating a new image. {detail}", 16384, -1)


def test_missing_name_attribute(daemon, ds):
    assert fails(daemon, M, 'SOURCE="/var/tmp/x"\nFORMAT="raw"\nSIZE="1"', ds) == (
        "[one.image.allocate] Error allocating a new image. Invalid NAME, it cannot be empty",
        16384, -1)


def test_name_limits_and_trailing_blanks(daemon, ds):
    a = register(daemon, ds, name="n" * 128)
    b = register(daemon, ds, name="with spaces and ünïcode")
    c = register(daemon, ds, name="trailing   ")
    assert [field(info(daemon, i), "NAME") for i in (a, b, c)] == [
        "n" * 128, "with spaces and ünïcode", "trailing"]


def test_type_versus_datastore_texts(daemon, ds):
    src = 'NAME="{}"\nSOURCE="/var/tmp/x"\nFORMAT="raw"\nSIZE="1"\nTYPE="{}"'
    prefix = "[one.image.allocate] Error allocating a new image. "
    assert fails(daemon, M, src.format("t1", "OS"), 2) == (
        prefix + "Only IMAGES of type KERNEL, RAMDISK and CONTEXT can be registered in a "
        "FILE_DS datastore", 16384, -1)
    for dsid in (1, ds):
        assert fails(daemon, M, src.format("t2", "RAMDISK"), dsid) == (
            prefix + "IMAGES of type KERNEL, RAMDISK and CONTEXT cannot be registered in an "
            "IMAGE_DS datastore", 16384, -1)
    assert fails(daemon, M, src.format("t3", "BACKUP"), ds) == (
        prefix + "IMAGES of type BACKUP can only be registered in an BACKUP_DS datastore",
        16384, -1)
    # unknown types count as OS for this check
    assert fails(daemon, M, src.format("t4", "FOO"), 2)[0] == (
        prefix + "Only IMAGES of type KERNEL, RAMDISK and CONTEXT can be registered in a "
        "FILE_DS datastore")


def test_duplicate_name_per_owner(daemon, ds):
    name = unique("dup")
    first = register(daemon, ds, name=name)
    assert fails(daemon, M, f'NAME="{name}"\nTYPE="DATABLOCK"\nSIZE="1"', ds) == (
        f"[one.image.allocate] Error allocating a new image. NAME is already taken by IMAGE "
        f"{first}.", 16384, -1)
    # another owner may use the same name
    _, session = user(daemon)
    other = ok(daemon, M, f'NAME="{name}"\nTYPE="DATABLOCK"\nSIZE="1"', ds, session=session)
    assert other != first


def test_path_source_format_rules(daemon, ds):
    prefix = "[one.image.allocate] Error allocating a new image. "
    assert fails(daemon, M, 'NAME="b"\nSOURCE="/x"\nPATH="/var/tmp/y"\nFORMAT="raw"\nSIZE="1"',
                 ds) == (prefix + "PATH and SOURCE cannot be both set.", 16384, -1)
    assert fails(daemon, M, 'NAME="b"\nSOURCE="/x"\nSIZE="1"', ds) == (
        prefix + "SOURCE needs FORMAT to be set.", 16384, -1)


def test_unknown_type_quirk_has_trailing_space(daemon, ds):
    assert fails(daemon, M, 'NAME="u"\nTYPE="FOO"\nSOURCE="/x"\nFORMAT="raw"\nSIZE="1"',
                 ds) == ("[one.image.allocate] Error allocating a new image. Unknown type ",
                         16384, -1)
    # it comes before the PATH/SOURCE rules
    assert fails(daemon, M, 'NAME="u"\nTYPE="FOO"\nSOURCE="/x"\nPATH="/var/tmp/x"\nSIZE="1"',
                 ds)[0] == "[one.image.allocate] Error allocating a new image. Unknown type "


def test_insert_failures_do_not_consume_ids(daemon, ds):
    name = unique("ids")
    first = register(daemon, ds, name=name)
    fails(daemon, M, f'NAME="{name}"\nSOURCE="/x"\nFORMAT="raw"\nSIZE="1"', ds)
    fails(daemon, M, 'NAME="a:b"\nSOURCE="/x"\nFORMAT="raw"\nSIZE="1"', ds)
    fails(daemon, M, 'NAME="u"\nTYPE="FOO"\nSOURCE="/x"\nFORMAT="raw"\nSIZE="1"', ds)
    fails(daemon, M, 'NAME="u"\nSOURCE="/x"\nSIZE="1"', ds)
    assert register(daemon, ds) == first + 1


# ------------------------------------------------------------ results
def test_source_image_ready_at_once(daemon, ds):
    oid = ok(daemon, M, 'NAME="by-source"\nSOURCE="/var/tmp/by-source"\nFORMAT="qcow2"\n'
             'SIZE="2"\nTYPE="datablock"', ds)
    xml = info(daemon, oid)
    assert [num(xml, t) for t in ("STATE", "PREV_STATE", "TYPE", "SIZE")] == [1, 1, 2, 2]
    assert [field(xml, t) for t in ("SOURCE", "PATH", "FORMAT", "FS")] == [
        "/var/tmp/by-source", "", "qcow2", ""]
    assert template_dict(xml) == {"DEV_PREFIX": "sd"}


def test_path_image_round_trip_with_dummy_driver(daemon, ds, one):
    oid = one.image.allocate({"NAME": "by-path", "PATH": "/var/tmp/by-path.img",
                              "FORMAT": "ignored", "DESCRIPTION": "d"}, ds)
    first = info(daemon, oid)
    # LOCKED with PREV_STATE 0 until the copy ends (the dummy driver may already be done)
    if num(first, "STATE") == 4:
        assert (num(first, "PREV_STATE"), field(first, "SOURCE"), field(first, "FORMAT")) == (
            0, "", "")
    xml = wait_state(daemon, oid, 1)
    assert [field(xml, t) for t in ("SOURCE", "PATH", "FORMAT")] == [
        "dummy_path", "/var/tmp/by-path.img", "dummy_format"]
    assert (num(xml, "PREV_STATE"), num(xml, "SIZE")) == (1, 1024)
    assert template_dict(xml) == {"DESCRIPTION": "d", "DEV_PREFIX": "sd"}
    img = one.image.info(oid)
    assert (img.STATE, img.SOURCE, img.FORMAT) == (1, "dummy_path", "dummy_format")


def test_mkfs_image_format_and_driver(daemon, ds):
    oid = ok(daemon, M, 'NAME="mk"\nTYPE="DATABLOCK"\nSIZE="3"\nFORMAT="qcow2"\nFS="ext4"\n'
             'DRIVER="x"\nTM_MAD="y"', ds)
    xml = wait_state(daemon, oid, 1)
    assert [field(xml, t) for t in ("SOURCE", "PATH", "FORMAT", "FS")] == [
        "dummy_path", "", "qcow2", "ext4"]
    assert template_dict(xml) == {"DEV_PREFIX": "sd"}
    plain = ok(daemon, M, 'NAME="mk-raw"\nTYPE="OS"\nSIZE="3"', ds)
    assert field(wait_state(daemon, plain, 1), "FORMAT") == "raw"


def test_mkfs_format_from_the_datastore_driver(daemon):
    qds = make_dummy(daemon, "alloc-qcow2", 'TM_MAD="qcow2"\n')
    assert template_dict(ok(daemon, "one.datastore.info", qds))["DRIVER"] == "qcow2"
    oid = ok(daemon, M, 'NAME="mkq"\nTYPE="DATABLOCK"\nSIZE="3"\nFORMAT="raw"', qds)
    xml = wait_state(daemon, oid, 1)
    assert field(xml, "FORMAT") == "qcow2"
    assert template_dict(xml) == {"DEV_PREFIX": "sd", "DRIVER": "qcow2"}


def test_dev_prefix_defaults(daemon, ds):
    cd = register(daemon, ds, extra='TYPE="CDROM"\n')
    os_ = register(daemon, ds, extra='TYPE="OS"\n')
    own = register(daemon, ds, extra='TYPE="OS"\nDEV_PREFIX="vd"\n')
    assert [template_dict(info(daemon, i))["DEV_PREFIX"] for i in (cd, os_, own)] == [
        "hd", "sd", "vd"]


def test_stored_template_drops_the_moved_attributes(daemon, ds):
    oid = ok(daemon, M, 'NAME="t"\nTYPE="OS"\nPERSISTENT="NO"\nSIZE="1"\nFS="xfs"\n'
             'DRIVER="raw"\nTM_MAD="x"\nFORMAT="raw"\nSOURCE="/var/tmp/t"\n'
             'DESCRIPTION="kept"\nTARGET="vdb"\nREADONLY="YES"\nCUSTOM=[ A="1" ]', ds)
    assert template_dict(info(daemon, oid)) == {
        "CUSTOM": {"A": "1"}, "DESCRIPTION": "kept", "DEV_PREFIX": "sd", "READONLY": "YES",
        "TARGET": "vdb"}


def test_allocate_in_the_files_datastore(daemon):
    oid = register(daemon, 2, extra='TYPE="context"\n')
    xml = info(daemon, oid)
    assert (num(xml, "TYPE"), num(xml, "DATASTORE_ID"), field(xml, "DATASTORE")) == (
        5, 2, "files")


def test_datastore_lists_its_images(daemon, ds):
    oid = register(daemon, ds)
    ids = [int(e.text) for e in parse(ok(daemon, "one.datastore.info", ds)).findall("IMAGES/ID")]
    assert oid in ids and ids == sorted(ids)


def test_pyone_errors_map_to_exception_classes(daemon, one, ds):
    with pytest.raises(pyone.OneNoExistsException):
        one.image.allocate('NAME="x"', 999)
    with pytest.raises(pyone.OneException) as exc:  # 0x4000 has no class of its own
        one.image.allocate('NAME="a:b"\nSOURCE="/x"\nFORMAT="raw"\nSIZE="1"', ds)
    assert str(exc.value) == ("[one.image.allocate] Error allocating a new image. Invalid NAME, "
                              "char ':' is not allowed")
    with pytest.raises(pyone.OneInternalException):
        one.image.allocate('NAME="x" = = ', ds)


def test_missing_parameters_are_faults(daemon):
    assert fault(daemon, M, 'NAME="x"') == (-501, "Not enough parameters")
    assert fault(daemon, M, 'NAME="x"', "1") == (
        -501, "Parameter that is supposed to be integer is not")
    assert fault(daemon, M, 5, 1) == (-501, "Parameter that is supposed to be a string is not")


# ------------------------------------------------------------------ the shipped fs driver
def test_fs_driver_probe_error(daemon):
    assert fails(daemon, M, 'NAME="nf"\nPATH="/var/tmp/oned-images-no-such.img"', 1) == (
        "[one.image.allocate] Cannot parse image SIZE: cannot access "
        "'/var/tmp/oned-images-no-such.img' (No such file or directory)", 8192, -1)


def test_fs_driver_round_trip(daemon):
    path = Path(tempfile.mkstemp(prefix="oned-images-e2e-", suffix=".img", dir="/var/tmp")[1])
    try:
        path.write_bytes(b"abc")
        oid = ok(daemon, M, f'NAME="{unique("fs")}"\nPATH="{path}"', 1)
        xml = wait_state(daemon, oid, 1)
        source = field(xml, "SOURCE")
        assert re.fullmatch(rf"{re.escape(str(daemon.var))}/datastores/1/[0-9a-f]{{32}}",
                            source), source
        assert (num(xml, "SIZE"), field(xml, "FORMAT"), field(xml, "PATH")) == (
            1, "raw", str(path))
        assert Path(source).read_bytes() == b"abc"
        ok(daemon, "one.image.delete", oid)
        wait_gone(daemon, oid)
        assert not Path(source).exists()
    finally:
        path.unlink(missing_ok=True)


def test_group_scoped_token_decides_the_group(daemon, ds):
    gname = unique("scoped")
    gid = ok(daemon, "one.group.allocate", gname)
    uid, session = user(daemon, groups=[gid, 1])
    name = session.split(":")[0]
    text = 'NAME="{}"\nTYPE="DATABLOCK"\nSIZE="1"'
    plain = ok(daemon, M, text.format("plain"), ds, session=session)
    token = ok(daemon, "one.user.login", name, "", 3600, 1, session=session)
    scoped = ok(daemon, M, text.format("scoped"), ds, session=f"{name}:{token}")
    assert [(num(info(daemon, i), "GID"), field(info(daemon, i), "GNAME"))
            for i in (plain, scoped)] == [(gid, gname), (1, "users")]
    # scoped to the other group only, the user loses the CREATE rule of "users"
    token = ok(daemon, "one.user.login", name, "", 3600, gid, session=session)
    assert fails(daemon, M, text.format("denied"), ds, session=f"{name}:{token}") == (
        f"[one.image.allocate] User [{uid}] : Not authorized to perform CREATE IMAGE.", 512, -1)


def test_never_monitored_datastore_has_no_space(fresh_daemon):
    # a DS_MAD_CONF (oned refuses a datastore without one) but no monitor script
    daemon = fresh_daemon('DS_MAD_CONF = [ NAME = "nosuch" ]\n')
    dsid = ok(daemon, "one.datastore.allocate", 'NAME="unmonitored"\nDS_MAD="nosuch"\n'
              'TM_MAD="dummy"', -1)
    assert fails(daemon, M, 'NAME="big"\nTYPE="DATABLOCK"\nSIZE="1"', dsid) == (
        "[one.image.allocate] Not enough space in datastore", 2048, -1)
    assert fails(daemon, M, 'NAME="s"\nSOURCE="/x"\nFORMAT="raw"\nSIZE="1"', dsid)[0] == (
        "[one.image.allocate] Not enough space in datastore")
    assert register(daemon, dsid, size=0) >= 0


@pytest.mark.parametrize("configured,effective", [("DATABLOCK", 2), ("cdrom", 1),
                                                  ("KERNEL", 0)])
def test_default_image_type_and_prefixes_from_config(fresh_daemon, configured, effective):
    d = fresh_daemon(extra_config=f'DEFAULT_IMAGE_TYPE = "{configured}"\n'
                     'DEFAULT_DEVICE_PREFIX = "vd"\nDEFAULT_CDROM_DEVICE_PREFIX = "sr"\n')
    oid = register(d, 1)
    xml = info(d, oid)
    assert num(xml, "TYPE") == effective
    assert template_dict(xml)["DEV_PREFIX"] == ("sr" if effective == 1 else "vd")
    other = register(d, 1, extra='TYPE="OS"\n')
    ok(d, "one.image.chtype", other, "")
    assert num(info(d, other), "TYPE") == effective
