"""Clusters: only cluster 0 ``default`` exists (vms.md §6.1, §9: onevm show and onehost
read it).  Its HOSTS and DATASTORES are served from the host and datastore rows, so no
allocate or delete has to rewrite the cluster's body."""

from __future__ import annotations

from dataclasses import dataclass

from oned_images import errors
from oned_images.domain.identity import Identity
from oned_images.domain.permissions import AuthRequest, Caller, ObjectAuth, Op
from oned_images.model.objects import Cluster, Permissions
from oned_images.store import pools
from oned_images.store.database import Database
from oned_images.store.models import ClusterRow, DatastoreRow, HostRow
from oned_images.xmldoc.cluster import cluster_from, cluster_xml
from oned_images.xmldoc.image import pool_xml

DEFAULT_CLUSTER_ID = 0
CLUSTER_PERMS = Permissions([1, 1, 0, 0, 0, 0, 0, 0, 0])


def cluster_auth(oid: int) -> ObjectAuth:
    return ObjectAuth("CLUSTER", oid, 0, 0, CLUSTER_PERMS)


def read_cluster(oid: int) -> Cluster:
    body = pools.body(ClusterRow, oid)
    if body is None:
        raise errors.no_exists("cluster", oid)
    return cluster_from(body)


def served_cluster(cluster: Cluster) -> str:
    cluster.hosts = [r[0] for r in HostRow.select(HostRow.oid)
                     .where(HostRow.cid == cluster.id).tuples()]
    cluster.datastores = [r[0] for r in DatastoreRow.select(DatastoreRow.oid)
                          .where(DatastoreRow.cid == cluster.id).tuples()]
    return cluster_xml(cluster)


def _served_pool() -> list[str]:
    return [served_cluster(cluster_from(b)) for b in pools.bodies(ClusterRow)]


@dataclass
class Clusters:
    db: Database
    identity: Identity

    async def info(self, caller: Caller, oid: int) -> str:
        cluster = await self.db.run(read_cluster, oid)
        req = AuthRequest(caller, self.identity.acl)
        req.add(Op.USE, cluster_auth(oid), check_lock=False)
        req.check()
        return await self.db.run(served_cluster, cluster)

    async def pool_info(self, caller: Caller) -> str:
        bodies = await self.db.run(_served_pool)
        visible = []
        for body in bodies:
            req = AuthRequest(caller, self.identity.acl)
            req.add(Op.USE, cluster_auth(cluster_from(body).id), check_lock=False)
            if not req.failures:
                visible.append(body)
        return pool_xml("CLUSTER_POOL", visible)
