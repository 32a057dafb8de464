"""Which DS_MADs and TM_MADs a datastore may name (Datastore::set_ds_mad/set_tm_mad):
those with a DS_MAD_CONF / TM_MAD_CONF, the file's or the built-in ones."""

from __future__ import annotations

from oned_images import config
from oned_images.domain.datastores import ds_mad_error, tm_mad_error
from oned_images.template import Template


def test_a_file_without_entries_defines_the_shipped_drivers():
    conf = config.parse("")
    assert [c.name for c in conf.ds_mad_conf] == ["dummy", "fs"]
    assert [c.name for c in conf.tm_mad_conf] == ["dummy", "local", "shared", "qcow2"]
    assert (conf.ds_mad_defined("fs"), conf.ds_mad_defined("ceph")) == (True, False)


def test_the_files_entries_come_first_and_add_drivers():
    conf = config.parse('DS_MAD_CONF = [ NAME = "fs", REQUIRED_ATTRS = "A" ]\n'
                        'DS_MAD_CONF = [ NAME = "ceph", REQUIRED_ATTRS = "CEPH_HOST" ]\n')
    assert [c.name for c in conf.ds_mad_conf] == ["fs", "ceph", "dummy"]
    assert conf.ds_mad("fs").required_attrs == ("A",)
    tmpl = Template.parse('CEPH_HOST="h"')
    assert ds_mad_error(conf, 0, "ceph", tmpl) is None
    assert ds_mad_error(conf, 0, "fs", tmpl) == (
        'Datastore template is missing the "A" attribute or it\'s empty.')
    assert ds_mad_error(conf, 0, "rbd", tmpl) == 'DS_MAD named "rbd" is not defined in oned.conf'
    assert ds_mad_error(conf, 1, "-", tmpl) is None   # system datastores have none
    assert tm_mad_error(conf, "ceph") == 'TM_MAD named "ceph" is not defined in oned.conf'
    assert tm_mad_error(conf, "qcow2") is None
