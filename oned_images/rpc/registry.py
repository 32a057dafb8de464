"""Every XML-RPC method, declared once: name, signature, help, error object, handler.

Dispatch, introspection and the call log all read this table; secret
parameters and results are declared here so the call log cannot show them (the
session is never logged).  Handlers are the thin adapters of the rpc modules:
they unpack parameters and call one domain verb.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from oned_images.rpc import datastores, hosts, images, stubs, system, templates, users, vms


@dataclass(frozen=True)
class Method:
    name: str
    signature: str
    help: str
    obj: str
    handler: Callable[..., Awaitable[object] | object]
    #: parameter positions that carry a password or token: the call log shows ``****``,
    #: and masks their text wherever else it would appear (a failure message).
    secret_params: tuple[int, ...] = ()
    #: the result is (or holds) a secret: a login token, password hashes and tokens
    #: in USER documents, the database password in the configuration.
    secret_result: bool = False


M = Method
METHODS: tuple[Method, ...] = (
    # system
    M("one.system.version", "A:s", "Returns the OpenNebula core version", "system",
      system.version),
    M("one.system.config", "A:s", "Returns the OpenNebula configuration", "system",
      system.config, secret_result=True),
    # users
    M("one.user.allocate", "A:ssssA", "Creates a new user", "user", users.allocate,
      secret_params=(2,)),
    M("one.user.delete", "A:si", "Deletes a user account", "user", users.delete),
    M("one.user.passwd", "A:sis", "Changes the password for the given user", "user",
      users.passwd, secret_params=(2,)),
    M("one.user.info", "A:si", "Returns user information", "user", users.info,
      secret_result=True),
    M("one.user.update", "A:sisi", "Updates a user template", "user", users.update),
    M("one.user.chgrp", "A:sii", "Changes the group of the given user", "user", users.chgrp),
    M("one.user.addgroup", "A:sii", "Adds the user to a secondary group", "user",
      users.addgroup),
    M("one.user.delgroup", "A:sii", "Deletes the user from a secondary group", "user",
      users.delgroup),
    M("one.user.login", "A:sssii", "Generates or sets a login token", "user", users.login,
      secret_params=(2,), secret_result=True),
    M("one.user.quota", "A:sis", "Sets quota limits", "user", users.quota),
    M("one.userpool.info", "A:s", "Returns the user pool", "user", users.pool_info,
      secret_result=True),
    M("one.userquota.info", "A:s", "Returns the default user quota limits", "user",
      users.userquota_info),
    M("one.userquota.update", "A:ss", "Changes the default user quota limits", "user",
      users.userquota_update),
    # groups
    M("one.group.allocate", "A:ss", "Allocates a new group", "group", users.group_allocate),
    M("one.group.delete", "A:si", "Deletes a group", "group", users.group_delete),
    M("one.group.info", "A:si", "Returns group information", "group", users.group_info),
    M("one.group.update", "A:sisi", "Updates a group template", "group", users.group_update),
    M("one.group.quota", "A:sis", "Sets quota limits", "group", users.group_quota),
    M("one.grouppool.info", "A:s", "Returns the group pool", "group", users.group_pool_info),
    M("one.groupquota.info", "A:s", "Returns the default group quota limits", "group",
      users.groupquota_info),
    M("one.groupquota.update", "A:ss", "Changes the default group quota limits", "group",
      users.groupquota_update),
    M("one.acl.info", "A:s", "Returns the ACL rule set", "acl", users.acl_info),
    # datastores
    M("one.datastore.allocate", "A:ssi", "Allocates a new datastore", "datastore",
      datastores.allocate),
    M("one.datastore.delete", "A:si", "Deletes a datastore", "datastore", datastores.delete),
    M("one.datastore.info", "A:si", "Returns datastore information", "datastore",
      datastores.info),
    M("one.datastore.update", "A:sisi", "Updates a datastore template", "datastore",
      datastores.update),
    M("one.datastore.chmod", "A:siiiiiiiiii", "Changes permission bits of a datastore",
      "datastore", datastores.chmod),
    M("one.datastore.chown", "A:siii", "Changes ownership of a datastore", "datastore",
      datastores.chown),
    M("one.datastore.rename", "A:sis", "Renames a datastore", "datastore", datastores.rename),
    M("one.datastore.enable", "A:sib", "Enables or disables a datastore", "datastore",
      datastores.enable),
    M("one.datastorepool.info", "A:s", "Returns the datastore pool", "datastore",
      datastores.pool_info),
    # images
    M("one.image.allocate", "A:ssib", "Allocates a new image", "image", images.allocate),
    M("one.image.clone", "A:sis", "Clones an existing image", "image", images.clone),
    M("one.image.delete", "A:sib", "Deletes an image", "image", images.delete),
    M("one.image.enable", "A:sib", "Enables or disables an image", "image", images.enable),
    M("one.image.persistent", "A:sib", "Makes an image persistent or non-persistent",
      "image", images.persistent),
    M("one.image.chtype", "A:sis", "Changes the type of an image", "image", images.chtype),
    M("one.image.update", "A:sis", "Updates an image template", "image", images.update),
    M("one.image.chmod", "A:siiiiiiiiii", "Changes permission bits of an image", "image",
      images.chmod),
    M("one.image.chown", "A:siii", "Changes ownership of an image", "image", images.chown),
    M("one.image.rename", "A:sis", "Renames an image", "image", images.rename),
    M("one.image.snapshotdelete", "A:sii", "Deletes a snapshot from an image", "image",
      images.snapshot_delete),
    M("one.image.snapshotrevert", "A:sii", "Reverts image state to a previous snapshot",
      "image", images.snapshot_revert),
    M("one.image.snapshotflatten", "A:sii", "Flattens an image snapshot", "image",
      images.snapshot_flatten),
    M("one.image.restore", "A:siis", "Restores a VM backup", "image", images.restore),
    M("one.image.lock", "A:sis", "Locks an image", "image", images.lock),
    M("one.image.unlock", "A:sii", "Unlocks an image", "image", images.unlock),
    M("one.image.info", "A:si", "Returns image information", "image", images.info),
    M("one.imagepool.info", "A:siii", "Returns the image pool", "image", images.pool_info),
    # what clients call around images
    M("one.zonepool.info", "A:s", "Returns the zone pool", "zone", stubs.zonepool_info),
    # clusters and hosts (vms.md §6)
    M("one.cluster.info", "A:sib", "Returns cluster information", "cluster",
      hosts.cluster_info),
    M("one.clusterpool.info", "A:s", "Returns the cluster pool", "cluster",
      hosts.cluster_pool_info),
    M("one.host.allocate", "A:ssssi", "Allocates a new host", "host", hosts.allocate),
    M("one.host.delete", "A:si", "Deletes a host", "host", hosts.delete),
    M("one.host.status", "A:sii", "Sets the status of the host", "host", hosts.status),
    M("one.host.update", "A:sisi", "Updates a host template", "host", hosts.update),
    M("one.host.rename", "A:sis", "Renames a host", "host", hosts.rename),
    M("one.host.info", "A:sib", "Returns host information", "host", hosts.info),
    M("one.hostpool.info", "A:s", "Returns the host pool", "host", hosts.pool_info),
    # VM templates (vms.md §4)
    M("one.template.allocate", "A:ss", "Allocates a new template", "virtual machine template", templates.allocate),
    M("one.template.info", "A:sibb", "Returns template information", "virtual machine template", templates.info),
    M("one.template.update", "A:sisi", "Updates a template", "virtual machine template", templates.update),
    M("one.template.delete", "A:sib", "Deletes a template", "virtual machine template", templates.delete),
    M("one.template.clone", "A:sisb", "Clones an existing template", "virtual machine template", templates.clone),
    M("one.template.chmod", "A:siiiiiiiiiib", "Changes permission bits of a template", "virtual machine template",
      templates.chmod),
    M("one.template.chown", "A:siii", "Changes ownership of a template", "virtual machine template",
      templates.chown),
    M("one.template.rename", "A:sis", "Renames a template", "virtual machine template", templates.rename),
    M("one.template.lock", "A:siib", "Locks a template", "virtual machine template", templates.lock),
    M("one.template.unlock", "A:si", "Unlocks a template", "virtual machine template", templates.unlock),
    M("one.templatepool.info", "A:siii", "Returns the template pool", "virtual machine template",
      templates.pool_info),
    M("one.template.instantiate", "A:sisbsb", "Instantiates a new virtual machine from a template",
      "virtual machine template", vms.instantiate),
    # virtual machines (vms.md §5)
    M("one.vm.allocate", "A:ssb", "Allocates a new virtual machine", "virtual machine",
      vms.allocate),
    M("one.vm.info", "A:sib", "Returns virtual machine instance information", "virtual machine",
      vms.info),
    M("one.vm.rename", "A:sis", "Renames a virtual machine", "virtual machine", vms.rename),
    M("one.vm.chmod", "A:siiiiiiiiii", "Changes permission bits of a virtual machine",
      "virtual machine", vms.chmod),
    M("one.vm.chown", "A:siii", "Changes ownership of a virtual machine", "virtual machine",
      vms.chown),
    M("one.vm.lock", "A:siib", "Locks a virtual machine", "virtual machine", vms.lock),
    M("one.vm.unlock", "A:si", "Unlocks a virtual machine", "virtual machine", vms.unlock),
    M("one.vm.deploy", "A:siibis", "Deploys a virtual machine", "virtual machine", vms.deploy),
    M("one.vm.action", "A:ssi", "Performs an action on a virtual machine", "virtual machine",
      vms.action),
    M("one.vm.disksnapshotcreate", "A:siis", "Takes a new snapshot of a VM disk",
      "virtual machine", vms.disk_snapshot_create),
    M("one.vm.disksnapshotrevert", "A:siii", "Reverts a VM disk to a snapshot",
      "virtual machine", vms.disk_snapshot_revert),
    M("one.vm.disksnapshotdelete", "A:siii", "Deletes a VM disk snapshot",
      "virtual machine", vms.disk_snapshot_delete),
    M("one.vm.disksnapshotrename", "A:siiis", "Renames a VM disk snapshot",
      "virtual machine", vms.disk_snapshot_rename),
    M("one.vm.disksaveas", "A:siissi", "Saves a VM disk as a new image", "virtual machine",
      vms.disk_saveas),
    M("one.vm.attach", "A:sis", "Attaches a new disk to a virtual machine", "virtual machine",
      vms.attach),
    M("one.vm.detach", "A:sii", "Detaches a disk from a virtual machine", "virtual machine",
      vms.detach),
    M("one.vm.recover", "A:sii", "Recovers a stuck VM", "virtual machine", vms.recover),
    M("one.vmpool.info", "A:siiiis", "Returns the virtual machine pool", "virtual machine",
      vms.pool_info),
    M("one.vmpool.infoextended", "A:siiiis", "Returns the virtual machine pool",
      "virtual machine", vms.pool_info_extended),
)

TABLE: dict[str, Method] = {m.name: m for m in METHODS}
assert len(TABLE) == len(METHODS), "a method is declared twice"
