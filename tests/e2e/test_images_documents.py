"""The IMAGE document and info/restore edge cases (api.md §2.12, §2.14, §4, §6.1):
whole documents against oned 7.0.2's captured replies, element order, CDATA, sorted
templates, hostile values, negative ids."""

from __future__ import annotations

import http.client
import re
import xmlrpc.client
from pathlib import Path

import pytest

from tests.support.seed import (
    dummy_datastore,
    fails,
    fault,
    field,
    info,
    normalise_times,
    ok,
    register,
    section,
    start_daemon,
    template_dict,
    unique,
    user,
    wait_state,
    write_scripts,
)
from tests.support.xsd import validate

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
SAMPLE_SOURCES = {
    "cp": "/var/lib/one//datastores/1/6b13d5c875b1c1a1866e337ed402cc9f qcow2",
    "mkfs": "/var/lib/one//datastores/1/db8720a542a7e35d8b671559e6712afa",
}


@pytest.fixture(scope="module")
def ds(daemon):
    return dummy_datastore(daemon, "doc-dummy")


@pytest.fixture(scope="module")
def sample_daemon(tmp_path_factory):
    """A fresh daemon whose "fs" driver answers like the one that made the samples."""
    tmp = tmp_path_factory.mktemp("samples")
    remotes = tmp / "remotes"
    write_scripts(remotes / "datastore" / "fs", {
        "stat": "#!/bin/sh\ncat >/dev/null\necho 64\n",
        "cp": f"#!/bin/sh\ncat >/dev/null\necho '{SAMPLE_SOURCES['cp']}'\n",
        "mkfs": f"#!/bin/sh\ncat >/dev/null\necho '{SAMPLE_SOURCES['mkfs']}'\n",
        "monitor": "#!/bin/sh\ncat >/dev/null\necho USED_MB=1\necho TOTAL_MB=20480\n"
                   "echo FREE_MB=20480\n",
    })
    d = start_daemon(tmp / "daemon", 'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", '
                     f'ARGUMENTS = "-t 15 -d fs", REMOTES = "{remotes}" ]\n')
    ok(d, "one.image.allocate", 'NAME="sample-datablock"\nTYPE="DATABLOCK"\nSIZE="10"\n'
       'PERSISTENT="YES"\nDESCRIPTION="empty 10 MB datablock created by the fs driver mkfs"', 1)
    ok(d, "one.image.allocate", 'NAME="sample-os-qcow2"\nTYPE="OS"\n'
       'PATH="/var/tmp/onebench/sample-os.qcow2"\nDEV_PREFIX="vd"\nLABELS="bench,sample"\n'
       'DESCRIPTION="64 MB virtual qcow2 copied into the datastore from PATH"', 1)
    ok(d, "one.image.allocate", 'NAME="sample-source"\nTYPE="DATABLOCK"\n'
       'SOURCE="/var/tmp/onebench/src/sample-source.img"\nFORMAT="raw"\nSIZE="1"\n'
       'DESCRIPTION="registered by SOURCE, no driver copy"', 1)
    for oid in range(3):
        wait_state(d, oid, 1)
    yield d
    d.drop()


# ------------------------------------------------------------------ whole documents
@pytest.mark.parametrize("oid", [0, 1, 2])
def test_info_documents_equal_oned_samples(sample_daemon, oid):
    expected = (SAMPLES / f"one.image.info.{oid}.body.xml").read_text().strip()
    got = ok(sample_daemon, "one.image.info", oid)
    assert normalise_times(got) == normalise_times(expected)


def test_pool_document_equals_oned_sample(sample_daemon):
    expected = (SAMPLES / "one.imagepool.info.body.xml").read_text().strip()
    got = ok(sample_daemon, "one.imagepool.info", -2, -1, -1)
    assert normalise_times(got) == normalise_times(expected)


@pytest.mark.parametrize("method,args,sample", [
    ("one.image.info", (2,), "one.image.info.2.response.xml"),
    ("one.imagepool.info", (-2, -1, -1), "one.imagepool.info.response.xml"),
])
def test_whole_http_bodies_equal_oned_samples(sample_daemon, method, args, sample):
    body = xmlrpc.client.dumps((sample_daemon.session(), *args), method).encode()
    conn = http.client.HTTPConnection("127.0.0.1", sample_daemon.port, timeout=30)
    conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
    got = conn.getresponse().read()
    conn.close()
    expected = (SAMPLES / sample).read_bytes()
    times = (rb"&lt;REGTIME&gt;\d+&lt;/REGTIME&gt;", rb"&lt;MODTIME&gt;\d+&lt;/MODTIME&gt;")
    for pattern in times:
        got, expected = re.sub(pattern, b"T", got), re.sub(pattern, b"T", expected)
    assert got == expected


def test_regtime_equals_modtime_and_is_now(sample_daemon):
    xml = ok(sample_daemon, "one.image.info", 2)
    assert field(xml, "REGTIME") == field(xml, "MODTIME")


# ------------------------------------------------------------------ serialization
def test_serialization_rules(daemon, ds):
    oid = register(daemon, ds, extra='TYPE="OS"\n')
    xml = info(daemon, oid)
    assert "\n" not in xml and not xml.startswith("<?xml")
    for name in ("SOURCE", "PATH", "FORMAT", "FS"):
        assert re.search(rf"<{name}><!\[CDATA\[[^\]]*\]\]></{name}>", xml), name
    assert "<FS><![CDATA[]]></FS>" in xml and "<PATH><![CDATA[]]></PATH>" in xml
    for name in ("VMS", "CLONES", "APP_CLONES", "BACKUP_INCREMENTS", "BACKUP_DISK_IDS"):
        assert f"<{name}></{name}>" in xml
    assert section(xml, "SNAPSHOTS") == (
        "<SNAPSHOTS><ALLOW_ORPHANS><![CDATA[NO]]></ALLOW_ORPHANS><CURRENT_BASE><![CDATA[-1]]>"
        "</CURRENT_BASE><NEXT_SNAPSHOT><![CDATA[0]]></NEXT_SNAPSHOT></SNAPSHOTS>")
    order = re.findall(r"<([A-Z_]+)>", xml.replace(section(xml, "TEMPLATE"), "")
                       .replace(section(xml, "SNAPSHOTS"), "")
                       .replace(section(xml, "PERMISSIONS"), ""))
    assert order == [
        "IMAGE", "ID", "UID", "GID", "UNAME", "GNAME", "NAME", "TYPE", "DISK_TYPE",
        "PERSISTENT", "REGTIME", "MODTIME", "SOURCE", "PATH", "FORMAT", "FS", "SIZE", "STATE",
        "PREV_STATE", "RUNNING_VMS", "CLONING_OPS", "CLONING_ID", "TARGET_SNAPSHOT",
        "DATASTORE_ID", "DATASTORE", "VMS", "CLONES", "APP_CLONES", "BACKUP_INCREMENTS",
        "BACKUP_DISK_IDS"]


def test_template_sorted_upper_cased_last_value_wins(daemon, ds):
    oid = register(daemon, ds, extra='ZZZ="z"\nAAA="a"\nmid="m"\nVEC=[ ZB="2", AB="1" ]\n'
                   'BBB="x"\nBBB="y"\nEMPTY=\nSUB=[ E="", F="f" ]\n_u="u"\n1num="n"\n')
    assert section(info(daemon, oid), "TEMPLATE") == (
        "<TEMPLATE><AAA><![CDATA[a]]></AAA><BBB><![CDATA[y]]></BBB>"
        "<DEV_PREFIX><![CDATA[sd]]></DEV_PREFIX><EMPTY><![CDATA[]]></EMPTY>"
        "<MID><![CDATA[m]]></MID><ONE_1NUM><![CDATA[n]]></ONE_1NUM>"
        "<SUB><E><![CDATA[]]></E><F><![CDATA[f]]></F></SUB>"
        "<VEC><AB><![CDATA[1]]></AB><ZB><![CDATA[2]]></ZB></VEC>"
        "<ZZZ><![CDATA[z]]></ZZZ><_U><![CDATA[u]]></_U></TEMPLATE>")
    # empty values survive every later rewrite of the document
    ok(daemon, "one.image.chmod", oid, -1, -1, -1, 1, -1, -1, -1, -1, -1)
    assert template_dict(info(daemon, oid))["EMPTY"] == ""
    assert template_dict(info(daemon, oid))["SUB"] == {"E": "", "F": "f"}


def test_empty_vector_is_dropped_when_the_document_is_read_back(daemon, ds):
    # oned rebuilds templates from XML ignoring childless elements: "EVEC=[]" is in
    # the row written by allocate (so in the pool listing) until the next write
    oid = register(daemon, ds, extra="EVEC=[]\n")
    assert "<EVEC></EVEC>" in ok(daemon, "one.imagepool.info", -2, oid, oid)
    ok(daemon, "one.image.update", oid, 'X="1"', 1)
    assert template_dict(info(daemon, oid)) == {"DEV_PREFIX": "sd", "X": "1"}


def test_kernel_image_has_an_empty_template(daemon):
    oid = register(daemon, 2, extra='TYPE="KERNEL"\nDEV_PREFIX="vd"\n')
    assert section(info(daemon, oid), "TEMPLATE") == "<TEMPLATE></TEMPLATE>"


HOSTILE = [
    'say "hi" and \'bye\'',
    "line one\nline two\n\ttabbed",
    "$(rm -rf /) `id` ${HOME} | ; & && > < >>",
    "ünïcödé 日本語 🚀 ∑",
    "<b>not markup</b> &amp; &lt; ]] > [[",
    "back\\slash \\\" quote",
    "# not a comment = , [ ]",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_round_trip_through_xml_input(daemon, ds, one, value):
    oid = one.image.allocate({"IMAGE": {"NAME": unique("h"), "SOURCE": "/var/tmp/h",
                                        "FORMAT": "raw", "SIZE": "1", "DESCRIPTION": value,
                                        "VEC": {"K": value}}}, ds)
    xml = info(daemon, oid)
    assert template_dict(xml)["DESCRIPTION"] == value
    assert template_dict(xml)["VEC"] == {"K": value}
    assert one.image.info(oid).TEMPLATE["DESCRIPTION"] == value
    # and survive an update (append) through the text form
    escaped = value.replace('"', '\\"')
    if not escaped.endswith("\\"):
        ok(daemon, "one.image.update", oid, f'OTHER="{escaped}"', 1)
        assert template_dict(info(daemon, oid))["OTHER"] == value


def test_cdata_terminator_in_xml_input_stays_well_formed(daemon, ds):
    # oned would write a broken document here; the daemon splits the CDATA section
    oid = ok(daemon, "one.image.allocate",
             "<IMAGE><NAME>cdata</NAME><SOURCE>/x</SOURCE><FORMAT>raw</FORMAT><SIZE>1</SIZE>"
             "<DESCRIPTION>a]]&gt;b]]&gt;</DESCRIPTION></IMAGE>", ds)
    xml = info(daemon, oid)
    assert template_dict(xml)["DESCRIPTION"] == "a]]>b]]>"
    assert validate(ok(daemon, "one.imagepool.info", -2, oid, oid)) == "IMAGE_POOL"


def test_carriage_return_survives_the_wire(daemon, ds):
    oid = ok(daemon, "one.image.allocate", "<IMAGE><NAME>cr</NAME><SOURCE>/x</SOURCE>"
             "<FORMAT>raw</FORMAT><SIZE>1</SIZE><D>a&#13;b</D></IMAGE>", ds)
    # the string value carries the CR (sent as &#x0d;); inside the document's CDATA any
    # XML parser then reads it as a line end, as with oned
    assert "<D><![CDATA[a\rb]]></D>" in info(daemon, oid)


# ------------------------------------------------------------------ info edge cases
def test_info_negative_ids(daemon):
    assert fails(daemon, "one.image.info", -1) == (
        "[one.image.info] Error getting image Pool.", 1024, -1)
    assert fails(daemon, "one.image.info", -5) == (
        "[one.image.info] Error getting image [-5].", 1024, -5)
    uid, session = user(daemon)
    for oid in (-1, -5):
        assert fails(daemon, "one.image.info", oid, session=session) == (
            f"[one.image.info] User [{uid}] : Not authorized to perform USE IMAGE.", 512, -1)


def test_info_permissions_and_missing(daemon, ds):
    oid = register(daemon, ds)
    uid, session = user(daemon)
    assert fails(daemon, "one.image.info", oid, session=session) == (
        f"[one.image.info] User [{uid}] : Not authorized to perform USE IMAGE [{oid}].",
        512, -1)
    # existence is checked first, for anyone
    assert fails(daemon, "one.image.info", 99999, session=session) == (
        "[one.image.info] Error getting image [99999].", 1024, 99999)


def test_info_decrypt_flag(daemon, ds):
    oid = register(daemon, ds)
    plain = info(daemon, oid)
    assert ok(daemon, "one.image.info", oid, True) == plain
    assert ok(daemon, "one.image.info", oid, False) == plain
    assert ok(daemon, "one.image.info", oid, True, "extra", 7) == plain
    assert fault(daemon, "one.image.info", oid, "garbage") == (
        -501, "Parameter that is supposed to be boolean is not")
    uid, session = user(daemon)
    mine = ok(daemon, "one.image.allocate", 'NAME="dec"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
              session=session)
    wait_state(daemon, mine, 1)
    # a user's decrypt flag is never read
    assert ok(daemon, "one.image.info", mine, "garbage", session=session) == info(daemon, mine)
    assert fault(daemon, "one.image.info") == (-501, "Not enough parameters")


# ------------------------------------------------------------------ restore
def test_restore_errors(daemon, ds):
    oid = register(daemon, ds)
    assert fails(daemon, "one.image.restore", 999, 1, "") == (
        "[one.image.restore] Error getting image [999].", 1024, 999)
    # QUIRK: a missing destination datastore is reported as an image
    assert fails(daemon, "one.image.restore", oid, 777, "") == (
        "[one.image.restore] Error getting image [777].", 1024, 777)
    assert fails(daemon, "one.image.restore", oid, 1, "A = = ") == (
        "[one.image.restore] Parse error: syntax error, unexpected $end, expecting OBRACKET "
        "or CCDATA or STRING at line 0, columns 6:7", 8192, -1)
    assert fails(daemon, "one.image.restore", oid, 1, 'NO_NIC="YES"') == (
        "[one.image.restore] Can only restore images of type BACKUP", 2048, -1)
    uid, session = user(daemon)
    assert fails(daemon, "one.image.restore", oid, 1, "", session=session) == (
        f"[one.image.restore] User [{uid}] : Not authorized to perform USE IMAGE [{oid}].",
        512, -1)
    assert fault(daemon, "one.image.restore", oid, 1) == (-501, "Not enough parameters")
