"""USER / GROUP documents and their pools (user.xsd, group.xsd, api.md §8.3).

The quota sections come rendered from domain.quotas (NETWORK_QUOTA is never
filled); a user or group without a quota row shows the empty sections of a fresh
oned, and the pools list a QUOTAS element after every object, as oned's LEFT JOIN
with its quota rows (which exist for every user and group) does.
"""

from __future__ import annotations

from oned_images.model.objects import Group, LoginToken, User
from oned_images.xmldoc.common import c, ids_from, ids_xml, num, parse, template_from, text

EMPTY_QUOTAS = (
    "<DATASTORE_QUOTA></DATASTORE_QUOTA><NETWORK_QUOTA></NETWORK_QUOTA>"
    "<VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>"
)


def user_xml(user: User) -> str:
    """The stored (non-extended) USER document: what USER_POOL lists."""
    tokens = "".join(
        f"<LOGIN_TOKEN><TOKEN>{t.token}</TOKEN><EXPIRATION_TIME>{t.expiration_time}"
        f"</EXPIRATION_TIME><EGID>{t.egid}</EGID></LOGIN_TOKEN>"
        for t in user.login_tokens
    )
    return "".join((
        f"<USER><ID>{user.id}</ID><GID>{user.gid}</GID>",
        ids_xml("GROUPS", user.groups),
        f"<GNAME>{user.gname}</GNAME><NAME>{user.name}</NAME>",
        c("PASSWORD", user.password), c("AUTH_DRIVER", user.auth_driver),
        f"<ENABLED>{user.enabled}</ENABLED>",
        tokens,
        user.template.to_xml("TEMPLATE"),
        "</USER>",
    ))


def user_extended(body: str, quotas: str = EMPTY_QUOTAS, defaults: str = EMPTY_QUOTAS) -> str:
    """one.user.info's form: the body plus quotas and the default quotas."""
    return (
        body[: -len("</USER>")]
        + quotas
        + f"<DEFAULT_USER_QUOTAS>{defaults}</DEFAULT_USER_QUOTAS></USER>"
    )


def quotas_xml(oid: int, quotas: str = EMPTY_QUOTAS) -> str:
    """The user_quotas / group_quotas body oned stores for every user and group."""
    return f"<QUOTAS><ID>{oid}</ID>{quotas}</QUOTAS>"


def user_pool(users: list[User], quotas: dict[int, str] | None = None,
              defaults: str = EMPTY_QUOTAS) -> str:
    """USER_POOL: each USER followed by its QUOTAS row (UserPool::dump's LEFT JOIN)."""
    quotas = quotas or {}
    return (
        "<USER_POOL>"
        + "".join(user_xml(u) + quotas_xml(u.id, quotas.get(u.id, EMPTY_QUOTAS))
                  for u in users)
        + f"<DEFAULT_USER_QUOTAS>{defaults}</DEFAULT_USER_QUOTAS></USER_POOL>"
    )


def user_from(body: str) -> User:
    el = parse(body)
    tokens = [
        LoginToken(text(t, "TOKEN"), num(t, "EXPIRATION_TIME"), num(t, "EGID", -1))
        for t in el.findall("LOGIN_TOKEN")
    ]
    return User(
        id=num(el, "ID"), gid=num(el, "GID"), groups=ids_from(el, "GROUPS"),
        gname=text(el, "GNAME"), name=text(el, "NAME"), password=text(el, "PASSWORD"),
        auth_driver=text(el, "AUTH_DRIVER"), enabled=num(el, "ENABLED"),
        login_tokens=tokens, template=template_from(el, "TEMPLATE"),
    )


def group_xml(group: Group) -> str:
    return "".join((
        f"<GROUP><ID>{group.id}</ID><NAME>{group.name}</NAME>",
        group.template.to_xml("TEMPLATE"),
        ids_xml("USERS", group.users),
        ids_xml("ADMINS", group.admins),
        "</GROUP>",
    ))


def group_extended(body: str, quotas: str = EMPTY_QUOTAS, defaults: str = EMPTY_QUOTAS) -> str:
    return (
        body[: -len("</GROUP>")]
        + quotas
        + f"<DEFAULT_GROUP_QUOTAS>{defaults}</DEFAULT_GROUP_QUOTAS></GROUP>"
    )


def group_pool(groups: list[Group], quotas: dict[int, str] | None = None,
               defaults: str = EMPTY_QUOTAS) -> str:
    """GROUP_POOL: each GROUP followed by its QUOTAS row (GroupPool::dump's LEFT JOIN)."""
    quotas = quotas or {}
    return (
        "<GROUP_POOL>"
        + "".join(group_xml(g) + quotas_xml(g.id, quotas.get(g.id, EMPTY_QUOTAS))
                  for g in groups)
        + f"<DEFAULT_GROUP_QUOTAS>{defaults}</DEFAULT_GROUP_QUOTAS></GROUP_POOL>"
    )


def group_from(body: str) -> Group:
    el = parse(body)
    return Group(
        id=num(el, "ID"), name=text(el, "NAME"), template=template_from(el, "TEMPLATE"),
        users=ids_from(el, "USERS"), admins=ids_from(el, "ADMINS"),
    )
