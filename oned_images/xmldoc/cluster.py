"""The CLUSTER document (cluster.xsd) and the CLUSTER_POOL wrapper."""

from __future__ import annotations

from oned_images.model.objects import Cluster
from oned_images.template import Template
from oned_images.xmldoc.common import ids_from, ids_xml, num, parse, template_from, text


def cluster_xml(cl: Cluster) -> str:
    return "".join((
        f"<CLUSTER><ID>{cl.id}</ID><NAME>{cl.name}</NAME>",
        ids_xml("HOSTS", cl.hosts), ids_xml("DATASTORES", cl.datastores),
        ids_xml("VNETS", cl.vnets), cl.template.to_xml("TEMPLATE"),
        "</CLUSTER>",
    ))


def cluster_from(body: str) -> Cluster:
    el = parse(body)
    return Cluster(id=num(el, "ID"), name=text(el, "NAME"), hosts=ids_from(el, "HOSTS"),
                   datastores=ids_from(el, "DATASTORES"), vnets=ids_from(el, "VNETS"),
                   template=template_from(el, "TEMPLATE"))


def default_cluster() -> Cluster:
    """ClusterPool's bootstrap cluster 0: RESERVED_CPU and RESERVED_MEM, both empty."""
    return Cluster(0, "default", template=Template.parse('RESERVED_CPU=""\nRESERVED_MEM=""'))
