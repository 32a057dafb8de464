"""Users, groups, ACL rules and sessions: who may call, and as whom.

Users and groups are few and read on every call, so the daemon keeps them in
memory (loaded at start, refreshed after each of its own writes) and
authenticates without touching the database.  Writes still go through one DB
transaction each, with the row locked.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.logger import Logger

from oned_images import errors
from oned_images.config import DaemonConfig
from oned_images.domain import quotas, vm_ops
from oned_images.domain.names import USER_FORBIDDEN, name_error
from oned_images.domain.permissions import (
    GROUP_ID,
    ID_MASK,
    INDIVIDUAL,
    OBJECT_BITS,
    TYPE_MASK,
    AclRule,
    AuthRequest,
    Caller,
    ObjectAuth,
    Op,
    authorize,
    default_acl_rules,
    vdc_group_rules,
)
from oned_images.model.objects import Group, LoginToken, Permissions, User
from oned_images.store import pools
from oned_images.store.database import Database
from oned_images.store.models import AclRow, GroupRow, UserRow
from oned_images.template import Template, TemplateError
from oned_images.xmldoc import user as userdoc

log = Logger(namespace="AuM")

ONEADMIN_GROUP = 0
USERS_GROUP = 1
FIRST_USER_ID = 2
FIRST_GROUP_ID = 100
MAX_TOKENS = 10
SESSION_CACHE_LIMIT = 10000
CORE = "core"
SERVER_CIPHER = "server_cipher"
#: drivers whose AUTH_MAD_CONF has PASSWORD_REQUIRED = "NO" in the shipped oned.conf.
PASSWORD_OPTIONAL = {"ldap"}
PASS_FORBIDDEN = set(" \t\n\v\f\r")


class _Refused(Exception):
    """An authentication refusal and why (for the log; the caller gets oned's text)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def sha1_hex(secret: str) -> str:
    return hashlib.sha1(secret.encode("utf-8")).hexdigest()


def user_name_error(name: str) -> str | None:
    """PoolObjectSQL::name_is_valid with User::INVALID_NAME_CHARS (space, ':', blanks)."""
    return name_error(name, USER_FORBIDDEN)


def password_error(password: str) -> str | None:
    if not password:
        return "Invalid password, it cannot be empty"
    for ch in password:
        if ch in PASS_FORBIDDEN:
            return f"Invalid password, character '{ch}' is not allowed"
    return None


def stored_password(driver: str, password: str) -> str:
    """Only the core driver hashes (UserPool::allocate, User::set_password)."""
    return sha256_hex(password) if driver == CORE else password


def server_cipher_token(server_user: str, server_password_hash: str, target: str,
                        expire: int) -> str:
    """What Sunstone builds: AES-256-CBC of ``server:target:expire`` (for tests and tools)."""
    key = server_password_hash[:32].encode()
    iv = server_password_hash[:16].encode()
    padder = padding.PKCS7(128).padder()
    data = padder.update(f"{server_user}:{target}:{expire}".encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode()


def _decrypt_server_token(password_hash: str, token64: str) -> str | None:
    try:
        raw = base64.b64decode(token64, validate=True)
        key = password_hash[:32].encode()
        iv = password_hash[:16].encode()
        if len(key) != 32 or len(raw) == 0 or len(raw) % 16:
            return None
        dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        data = dec.update(raw) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return (unpadder.update(data) + unpadder.finalize()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def user_auth(user: User) -> ObjectAuth:
    """Users own themselves (uid = oid) with USE and MANAGE on their own object."""
    return ObjectAuth("USER", user.id, user.id, user.gid, Permissions([1, 1, 0, 0, 0, 0, 0, 0, 0]))


def group_auth(group: Group) -> ObjectAuth:
    return ObjectAuth("GROUP", group.id, 0, group.id, Permissions([1, 1, 0, 1, 0, 0, 0, 0, 0]))


@dataclass
class Identity:
    """The in-memory view of users, groups and ACLs, plus the session cache."""

    db: Database
    config: DaemonConfig
    clock: Callable[[], float] = time.time
    users: dict[int, User] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    acl: list[AclRule] = field(default_factory=list)
    _sessions: dict[str, tuple[int, float, int]] = field(default_factory=dict)

    # ------------------------------------------------------------------ loading
    def load_sync(self) -> None:
        """Fill the caches (start-up, before the port listens)."""
        users, groups, acl = self.db.run_sync(_load_all)
        self.users = {u.id: u for u in users}
        self.by_name = {u.name: u.id for u in users}
        self.groups = {g.id: g for g in groups}
        self.acl = acl

    async def reload(self) -> None:
        """Another daemon wrote users, groups or ACLs (store/versions.py): the caches are
        replaced whole and the checked secrets forgotten (a password may have changed)."""
        users, groups, acl = await self.db.run(_load_all)
        self.users = {u.id: u for u in users}
        self.by_name = {u.name: u.id for u in users}
        self.groups = {g.id: g for g in groups}
        self.acl = acl
        self._sessions.clear()

    def _store_user(self, user: User | None, old_name: str | None = None) -> None:
        if old_name is not None:
            self.by_name.pop(old_name, None)
        if user is not None:
            self.users[user.id] = user
            self.by_name[user.name] = user.id
        self._sessions.clear()

    def _remember(self, key: str, entry: tuple[int, float, int]) -> None:
        """Cache a checked secret; expired entries are dropped once the cache is large,
        so a client minting many sessions cannot grow it without bound."""
        if len(self._sessions) >= SESSION_CACHE_LIMIT:
            now = self.clock()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            if len(self._sessions) >= SESSION_CACHE_LIMIT:
                self._sessions.clear()
        self._sessions[key] = entry

    def _background(self, d) -> None:
        """A write started by authentication: refresh the cache when it lands."""
        d.addCallback(self._store_user)
        d.addErrback(lambda f: log.failure("background user update failed", f))

    # ------------------------------------------------------------ authentication
    def authenticate(self, session: str, peer: str = "-") -> Caller:
        """The caller of a session, or the authentication error, logged with the user name
        and peer (never the secret) at WARN: failed logins are what an operator watches."""
        username, sep, secret = session.partition(":")
        if not sep:
            # no user name: the whole string may be a password typed in the wrong place.
            log.warn("Authentication failed from {peer}: session without a user name",
                     peer=peer)
            raise errors.authentication()
        try:
            return self._authenticate(username, secret, session)
        except _Refused as refused:
            log.warn('Authentication failed for user "{user}" from {peer}: {why}',
                     user=username[:128], peer=peer, why=refused.why)
            raise errors.authentication() from None

    def _authenticate(self, username: str, secret: str, session: str) -> Caller:
        if user_name_error(username):
            raise _Refused("no such user")
        uid = self.by_name.get(username)
        user = self.users.get(uid) if uid is not None else None
        if user is None:
            raise _Refused("no such user")
        if not user.enabled:
            raise _Refused("user disabled")
        if user.auth_driver.startswith("server"):
            return self._server_session(user, secret)
        now = self.clock()
        why = "wrong password"
        for token in user.login_tokens:
            if token.token != secret:
                continue
            if token.expiration_time != -1 and token.expiration_time <= now:
                # LoginTokenPool::is_valid drops an expired token it is asked about.
                self._background(self.db.run(_drop_token, user.id, secret))
                why = "expired login token"
                break
            if token.egid != -1:
                if token.egid not in user.groups:
                    self._background(self.db.run(_drop_token, user.id, secret))
                    raise _Refused("login token of a group the user left")
                return self._caller(user, egid=token.egid)
            return self._caller(user)
        cached = self._sessions.get(session)
        if cached is not None and cached[1] > now and cached[0] == user.id:
            return self._caller(user, egid=cached[2])
        if user.auth_driver != CORE:
            raise _Refused(f"auth driver {user.auth_driver} is not available")
        if sha256_hex(secret) == user.password:
            pass
        elif sha1_hex(secret) == user.password:
            self._background(self.db.run(_upgrade_password, user.id, sha256_hex(secret)))
        else:
            raise _Refused(why)
        if self.config.session_expiration_time > 0:
            self._remember(session, (user.id, now + self.config.session_expiration_time, -1))
        return self._caller(user)

    def _server_session(self, server: User, secret: str) -> Caller:
        parts = secret.split(":")
        if len(parts) == 2:
            target_name, egid, token64 = parts[0], -1, parts[1]
        elif len(parts) == 3:
            target_name, token64 = parts[0], parts[2]
            try:
                egid = int(parts[1])
            except ValueError:
                raise _Refused("malformed server token") from None
        else:
            raise _Refused("malformed server token")
        tid = self.by_name.get(target_name)
        target = self.users.get(tid) if tid is not None else None
        if target is None or not target.enabled:
            raise _Refused("no such (enabled) target user")
        now = self.clock()
        key = f"{server.name}:{secret}"
        cached = self._sessions.get(key)
        if not (cached and cached[1] > now and cached[0] == target.id):
            plain = _decrypt_server_token(server.password, token64)
            if plain is None:
                raise _Refused("invalid server token")
            fields = plain.split(":")
            try:
                ok = len(fields) >= 3 and fields[0] == server.name and int(fields[-1]) > now
            except ValueError:
                ok = False
            if not ok:
                raise _Refused("invalid or expired server token")
            if self.config.session_expiration_time > 0:
                self._remember(key, (target.id, now + self.config.session_expiration_time,
                                     egid))
        if egid != -1 and egid not in target.groups:
            raise _Refused(f"target user not in group {egid}")
        return self._caller(target, egid=egid)

    def _caller(self, user: User, egid: int = -1) -> Caller:
        umask = None
        raw = user.template.get("UMASK")
        if raw:
            try:
                umask = int(raw, 8)
            except ValueError:
                umask = None
        if egid != -1:
            group = self.groups.get(egid)
            return Caller(user.id, egid, frozenset({egid}), user.name,
                          group.name if group else "", umask, scoped=True)
        return Caller(user.id, user.gid, frozenset(user.groups), user.name, user.gname, umask)

    # ----------------------------------------------------------------- lookups
    def user(self, uid: int) -> User:
        user = self.users.get(uid)
        if user is None:
            raise errors.no_exists("user", uid)
        return user

    def group(self, gid: int) -> Group:
        group = self.groups.get(gid)
        if group is None:
            raise errors.no_exists("group", gid)
        return group

    def umask_for(self, caller: Caller) -> int:
        return caller.umask if caller.umask is not None else self.config.default_umask

    def user_option(self, caller: Caller, name: str, default: str) -> str:
        """OPENNEBULA=[name=…] from the user template, then the group's, then oned.conf."""
        for tmpl in (self.users[caller.uid].template if caller.uid in self.users else None,
                     self.groups[caller.gid].template if caller.gid in self.groups else None):
            if tmpl is None:
                continue
            vec = tmpl.get_vector("OPENNEBULA")
            if vec and vec.get(name):
                return vec[name]
        return default

    def vm_right(self, caller: Caller, operation: str) -> Op:
        """The right a VM operation needs from this caller (vm_ops): the user's
        template, then the group the call acts as, then the configuration."""
        user, group = self.users.get(caller.uid), self.groups.get(caller.gid)
        return vm_ops.right_for(operation,
                                vm_ops.OpClasses.of_template(user.template if user else None),
                                vm_ops.OpClasses.of_template(group.template if group else None),
                                self.config.vm_ops)

    # ------------------------------------------------------------------- users
    def list_desc(self, caller: Caller) -> bool:
        """API_LIST_ORDER for pool listings: user template, group template, oned.conf."""
        order = self.user_option(caller, "API_LIST_ORDER", self.config.api_list_order)
        return order.upper() == "DESC"

    async def user_allocate(self, caller: Caller, name: str, password: str, driver: str,
                            gids: list[int]) -> int:
        # UserAllocate::allocate_authorization: CREATE USER, MANAGE on every named
        # group other than the caller's primary one (a missing group is NO_EXISTS).
        req = AuthRequest(caller, self.acl)
        req.add(Op.CREATE, ObjectAuth("USER", -1))
        for gid in gids:
            group = self.group(gid)
            if gid != caller.gid:
                req.add(Op.MANAGE, group_auth(group))
        req.check()
        if not gids:
            gids = [USERS_GROUP if caller.gid == ONEADMIN_GROUP else caller.gid]
        driver = driver or CORE
        # UserPool::allocate: password, then name, then duplicates; every failure is
        # INTERNAL with the pool's text (and a trailing dot for the first two).
        err = None if driver in PASSWORD_OPTIONAL else password_error(password)
        if err is None:
            err = user_name_error(name)
        if err:
            raise errors.internal(err + ".")
        if name in self.by_name:
            raise errors.internal(f"NAME is already taken by USER {self.by_name[name]}.")
        primary = self.groups[gids[0]]
        user = User(id=-1, gid=primary.id, groups=sorted(set(gids)), gname=primary.name,
                    name=name, password=stored_password(driver, password), auth_driver=driver,
                    enabled=1)
        user.template.set("TOKEN_PASSWORD", sha256_hex(secrets.token_hex(32)))
        user, groups = await self.db.run(_insert_user, user)
        self._store_user(user)
        for g in groups:
            self.groups[g.id] = g
        return user.id

    async def user_delete(self, caller: Caller, uid: int) -> int:
        user = self.user(uid)
        authorize(caller, self.acl, Op.ADMIN, user_auth(user))
        if uid == 0:
            raise errors.action("Cannot delete user. oneadmin cannot be deleted.")
        groups, acl = await self.db.run(_delete_user, uid)
        self.users.pop(uid, None)
        self._store_user(None, old_name=user.name)
        for g in groups:
            self.groups[g.id] = g
        self.acl = acl
        return uid

    async def passwd(self, caller: Caller, uid: int, password: str) -> int:
        user = self.user(uid)
        authorize(caller, self.acl, Op.MANAGE, user_auth(user))
        # User::set_password checks the text for every driver; it also drops the
        # user's login tokens.
        err = password_error(password)
        if err:
            raise errors.action(err)
        new = await self.db.run(_set_password, uid,
                                stored_password(user.auth_driver, password), True)
        self._store_user(new)
        return uid

    async def user_info(self, caller: Caller, uid: int) -> str:
        if uid == -1:
            uid = caller.uid
        user = self.user(uid)
        authorize(caller, self.acl, Op.USE, user_auth(user), check_lock=False)
        mine, defaults = await self.db.run(_quota_sections, quotas.USER, uid)
        return userdoc.user_extended(userdoc.user_xml(user), mine, defaults)

    async def userpool_info(self, caller: Caller) -> str:
        if caller.is_admin:
            visible = sorted(self.users)
        else:
            visible = [caller.uid]
        if self.list_desc(caller):
            visible.reverse()
        rows, defaults = await self.db.run(_all_quota_sections, quotas.USER)
        return userdoc.user_pool([self.users[i] for i in visible], rows, defaults)

    async def user_update(self, caller: Caller, uid: int, text: str, append: int) -> int:
        user = self.user(uid)
        authorize(caller, self.acl, Op.MANAGE, user_auth(user))
        if append not in (0, 1):
            raise errors.api("Wrong update type")
        tmpl = _updated_template(text)
        new = await self.db.run(_update_template, _read_user, _write_user, uid, tmpl,
                                append == 1)
        self._store_user(new)
        return uid

    async def chgrp(self, caller: Caller, uid: int, gid: int) -> int:
        # UserChown: group id, user, group, the oneadmin rule, then MANAGE USER +
        # USE GROUP; the old primary group stays a secondary one when the new
        # group already was one.
        if gid < 0:
            raise errors.api("Wrong group ID")
        user = self.user(uid)
        group = self.group(gid)
        if uid == 0:
            raise errors.internal(
                f"user [0] {user.name} cannot be moved outside of the group [0] oneadmin")
        req = AuthRequest(caller, self.acl)
        req.add(Op.MANAGE, user_auth(user))
        req.add(Op.USE, group_auth(group))
        req.check()
        if user.gid == gid:
            return uid
        new, groups = await self.db.run(_change_group, uid, gid, "chgrp")
        self._store_user(new)
        for g in groups:
            self.groups[g.id] = g
        return uid

    def _edit_group_checks(self, caller: Caller, uid: int, gid: int) -> User:
        user = self.user(uid)
        group = self.group(gid)
        req = AuthRequest(caller, self.acl)
        req.add(Op.MANAGE, user_auth(user))
        req.add(Op.MANAGE, group_auth(group))
        req.check()
        return user

    async def addgroup(self, caller: Caller, uid: int, gid: int) -> int:
        user = self._edit_group_checks(caller, uid, gid)
        if gid in user.groups:
            raise errors.action("User is already in this group")
        new, groups = await self.db.run(_change_group, uid, gid, "add")
        self._store_user(new)
        for g in groups:
            self.groups[g.id] = g
        return uid

    async def delgroup(self, caller: Caller, uid: int, gid: int) -> int:
        user = self._edit_group_checks(caller, uid, gid)
        if gid == user.gid:
            raise errors.action("Cannot remove user from the primary group")
        if gid not in user.groups:
            raise errors.action("User is not part of this group")
        new, groups = await self.db.run(_change_group, uid, gid, "del")
        self._store_user(new)
        for g in groups:
            self.groups[g.id] = g
        return uid

    async def login(self, caller: Caller, username: str, token: str, valid: int,
                    egid: int) -> str:
        uid = self.by_name.get(username)
        if uid is None:
            raise errors.no_exists("user", -1)
        user = self.users[uid]
        authorize(caller, self.acl, Op.MANAGE, user_auth(user))
        if valid == 0:
            if not token:
                new = await self.db.run(_set_tokens, uid, [])
                self._store_user(new)
                return token
            if not any(t.token == token for t in user.login_tokens):
                raise errors.api(f"Could not find token: {token}")
            new = await self.db.run(
                _set_tokens, uid, [t for t in user.login_tokens if t.token != token])
            self._store_user(new)
            return token
        if valid < -1:
            raise errors.api("Wrong valid period for token")
        if egid != -1:
            if not caller.is_admin and (egid not in user.groups or egid not in caller.groups):
                raise errors.api("EGID is not in user group list")
        elif set(user.groups) != set(caller.groups):
            # UserLogin compares the target's groups with the session's: a group-
            # scoped session (or another user's) cannot mint an unscoped token.
            raise errors.api("Cannot create a full token with a specific group token")
        now = int(self.clock())
        tokens = [t for t in user.login_tokens
                  if t.expiration_time == -1 or t.expiration_time > now]
        if len(tokens) >= MAX_TOKENS:
            raise errors.api("Max number of tokens limit reached.")
        token = token or sha256_hex(str(secrets.randbits(64)))
        expire = -1 if valid == -1 else now + valid
        tokens = [t for t in tokens if t.token != token]
        tokens.append(LoginToken(token, expire, egid))
        # LoginTokenPool keeps its tokens in a map ordered by the token text.
        tokens.sort(key=lambda t: t.token)
        new = await self.db.run(_set_tokens, uid, tokens)
        self._store_user(new)
        return token

    # ------------------------------------------------------------------ groups
    async def group_allocate(self, caller: Caller, name: str) -> int:
        authorize(caller, self.acl, Op.CREATE, ObjectAuth("GROUP", -1))

        # GroupPool::allocate: name, duplicates; failures are INTERNAL.
        err = name_error(name)
        if err:
            raise errors.internal(err)
        for g in self.groups.values():
            if g.name == name:
                raise errors.internal(f"NAME is already taken by GROUP {g.id}.")
        group, acl = await self.db.run(_insert_group_with_vdc_rules, Group(id=-1, name=name))
        self.groups[group.id] = group
        self.acl = acl
        return group.id

    async def group_delete(self, caller: Caller, gid: int) -> int:
        group = self.group(gid)
        authorize(caller, self.acl, Op.ADMIN, group_auth(group))
        if gid < FIRST_GROUP_ID:
            raise errors.action("Cannot delete group. System Groups (ID < 100) cannot be "
                                "deleted.")
        if group.users:
            raise errors.action(f"Cannot delete group. Group {gid} is not empty.")
        self.acl = await self.db.run(_delete_group, gid)
        self.groups.pop(gid, None)
        return gid

    async def group_info(self, caller: Caller, gid: int) -> str:
        if gid == -1:
            gid = caller.gid
        group = self.group(gid)
        authorize(caller, self.acl, Op.USE, group_auth(group), check_lock=False)
        mine, defaults = await self.db.run(_quota_sections, quotas.GROUP, gid)
        return userdoc.group_extended(userdoc.group_xml(group), mine, defaults)

    async def group_update(self, caller: Caller, gid: int, text: str, append: int) -> int:
        """one.group.update: as one.user.update (MANAGE GROUP); a group's template holds
        the options its users inherit (OPENNEBULA, VM_*_OPERATIONS)."""
        group = self.group(gid)
        authorize(caller, self.acl, Op.MANAGE, group_auth(group))
        if append not in (0, 1):
            raise errors.api("Wrong update type")
        tmpl = _updated_template(text)
        self.groups[gid] = await self.db.run(_update_template, _read_group, _write_group, gid,
                                             tmpl, append == 1)
        return gid

    async def grouppool_info(self, caller: Caller) -> str:
        ids = sorted(self.groups) if caller.is_admin else sorted(
            g for g in self.groups if g in caller.groups)
        if self.list_desc(caller):
            ids.reverse()
        rows, defaults = await self.db.run(_all_quota_sections, quotas.GROUP)
        return userdoc.group_pool([self.groups[g] for g in ids], rows, defaults)

    # ------------------------------------------------------------------ quotas
    async def user_quota(self, caller: Caller, uid: int, text: str) -> int:
        """UserAPI::quota: ADMIN on the user (existence first), never oneadmin."""
        user = self.user(uid)
        authorize(caller, self.acl, Op.ADMIN, user_auth(user))
        if uid == 0:
            raise errors.action("Cannot set quotas for oneadmin user")
        tmpl = _quota_template(text)
        await self.db.run(_set_quota, quotas.USER, uid, tmpl)
        return uid

    async def group_quota(self, caller: Caller, gid: int, text: str) -> int:
        """GroupAPI::quota: never group oneadmin, then ADMIN on the group (a missing
        group is answered as a bare AUTHORIZATION, as GroupAPI::quota does)."""
        if gid == ONEADMIN_GROUP:
            raise errors.action("Cannot set quotas for oneadmin group")
        group = self.groups.get(gid)
        if group is None:
            raise errors.OneError(errors.ErrorCode.AUTHORIZATION, obj="group")
        authorize(caller, self.acl, Op.ADMIN, group_auth(group))
        tmpl = _quota_template(text)
        await self.db.run(_set_quota, quotas.GROUP, gid, tmpl)
        return gid

    async def default_quota_info(self, kind: str) -> str:
        entries = await self.db.run(quotas.read_defaults, kind)
        return quotas.defaults_xml(kind, entries)

    async def default_quota_update(self, caller: Caller, kind: str, text: str) -> str:
        """QuotaUpdate: only callers whose (effective) group is oneadmin."""
        if caller.gid != ONEADMIN_GROUP:
            raise errors.authorization(
                "The default quotas can only be updated by users in the oneadmin group")
        tmpl = _quota_template(text)
        return await self.db.run(quotas.set_defaults, kind, tmpl)

    def acl_info(self, caller: Caller) -> str:
        # AclInfo: basic_authorization(-1) with MANAGE ACL.
        authorize(caller, self.acl, Op.MANAGE, ObjectAuth("ACL", -1), check_lock=False)
        rules = "".join(
            f"<ACL><ID>{r.oid}</ID><USER>{r.user:x}</USER><RESOURCE>{r.resource:x}</RESOURCE>"
            f"<RIGHTS>{r.rights:x}</RIGHTS><ZONE>{r.zone:x}</ZONE>"
            f"<STRING>{r.to_string()}</STRING></ACL>"
            for r in self.acl
        )
        return f"<ACL_POOL>{rules}</ACL_POOL>"


# ---------------------------------------------------------------- transactions
def _quota_template(text: str) -> Template:
    """A quota template keeps every DATASTORE vector (no replace mode)."""
    try:
        return Template.parse(text, replace_mode=False)
    except TemplateError as exc:
        raise errors.action(exc.message) from None


def _set_quota(kind: str, oid: int, tmpl: Template) -> None:
    # the object may have gone since the in-memory check; do not leave an orphan row
    model = UserRow if kind == quotas.USER else GroupRow
    if pools.body(model, oid, lock=True) is None:
        raise errors.no_exists(kind, oid)
    quotas.set_quota(kind, oid, tmpl)


def _quota_sections(kind: str, oid: int) -> tuple[str, str]:
    return (quotas.sections_xml(quotas.read(kind, oid)),
            quotas.sections_xml(quotas.read_defaults(kind)))


def _all_quota_sections(kind: str) -> tuple[dict[int, str], str]:
    rows = {oid: quotas.sections_xml(e) for oid, e in quotas.all_rows(kind).items()}
    return rows, quotas.sections_xml(quotas.read_defaults(kind))


def _meta(user: User) -> pools.RowMeta:
    return pools.RowMeta(user.name, user.id, user.gid, Permissions([1, 1, 0, 0, 0, 0, 0, 0, 0]))


def _group_meta(group: Group) -> pools.RowMeta:
    return pools.RowMeta(group.name, 0, group.id, Permissions([1, 1, 0, 1, 0, 0, 0, 0, 0]))


def _load_all() -> tuple[list[User], list[Group], list[AclRule]]:
    users = [userdoc.user_from(b) for b in pools.bodies(UserRow)]
    groups = [userdoc.group_from(b) for b in pools.bodies(GroupRow)]
    return users, groups, _read_acl()


def _read_user(uid: int) -> User:
    body = pools.body(UserRow, uid, lock=True)
    if body is None:
        raise errors.no_exists("user", uid)
    return userdoc.user_from(body)


def _write_user(user: User) -> None:
    pools.update(UserRow, user.id, _meta(user), userdoc.user_xml(user))


def _read_group(gid: int) -> Group:
    body = pools.body(GroupRow, gid, lock=True)
    if body is None:
        raise errors.no_exists("group", gid)
    return userdoc.group_from(body)


def _write_group(group: Group) -> None:
    pools.update(GroupRow, group.id, _group_meta(group), userdoc.group_xml(group))


def _insert_user(user: User, oid: int | None = None) -> tuple[User, list[Group]]:
    if pools.oid_by_name(UserRow, user.name) is not None:
        raise errors.internal(
            f"NAME is already taken by USER {pools.oid_by_name(UserRow, user.name)}.")
    user.id = oid if oid is not None else pools.next_oid("user_pool", FIRST_USER_ID)
    pools.insert(UserRow, user.id, _meta(user), userdoc.user_xml(user))
    changed = []
    for gid in user.groups:
        group = _read_group(gid)
        group.users = sorted(set(group.users) | {user.id})
        _write_group(group)
        changed.append(group)
    return user, changed


def _delete_user(uid: int) -> tuple[list[Group], list[AclRule]]:
    user = _read_user(uid)
    changed = []
    for gid in user.groups:
        group = _read_group(gid)
        group.users = [u for u in group.users if u != uid]
        group.admins = [u for u in group.admins if u != uid]
        _write_group(group)
        changed.append(group)
    pools.delete(UserRow, uid)
    quotas.drop(quotas.USER, uid)
    # AclManager::del_uid_rules and del_resource_rules(uid, USER).
    _delete_rules(lambda r: r.user == INDIVIDUAL | uid
                  or (r.resource & OBJECT_BITS["USER"]
                      and r.resource & (TYPE_MASK | ID_MASK) == INDIVIDUAL | uid))
    return changed, _read_acl()


def _set_password(uid: int, password: str, reset_tokens: bool = False) -> User:
    user = _read_user(uid)
    user.password = password
    if reset_tokens:
        user.login_tokens = []
    _write_user(user)
    return user


def _upgrade_password(uid: int, password: str) -> User:
    return _set_password(uid, password)


def _drop_token(uid: int, token: str) -> User:
    user = _read_user(uid)
    user.login_tokens = [t for t in user.login_tokens if t.token != token]
    _write_user(user)
    return user


def _set_tokens(uid: int, tokens: list[LoginToken]) -> User:
    user = _read_user(uid)
    user.login_tokens = tokens
    _write_user(user)
    return user


def _updated_template(text: str) -> Template:
    """A user's or group's new template, checked as oned's post_update_template does."""
    try:
        tmpl = Template.parse(text)
        vm_ops.check_template(tmpl)
    except TemplateError as exc:
        raise errors.internal(f"Cannot update template. {exc.message}") from None
    except vm_ops.UnknownOperation as exc:
        raise errors.internal(f"Cannot update template. {exc}") from None
    return tmpl


def _update_template(read: Callable, write: Callable, oid: int, tmpl: Template,
                     append: bool):
    """A user's or group's template replaced, or merged into (append)."""
    obj = read(oid)
    if append:
        obj.template.merge(tmpl)
    else:
        obj.template = tmpl
    write(obj)
    return obj


def _change_group(uid: int, gid: int, how: str) -> tuple[User, list[Group]]:
    user = _read_user(uid)
    changed: dict[int, Group] = {}

    def touch(g: int) -> Group:
        if g not in changed:
            changed[g] = _read_group(g)
        return changed[g]

    if how == "chgrp":
        old = user.gid
        # The old primary group is left only when the new one was not already a
        # secondary group of the user (UserChown's remove_old_group).
        if old != gid and gid not in user.groups:
            user.groups = [g for g in user.groups if g != old]
            grp = touch(old)
            grp.users = [u for u in grp.users if u != uid]
        user.gid = gid
        user.groups = sorted(set(user.groups) | {gid})
        new = touch(gid)
        new.users = sorted(set(new.users) | {uid})
        user.gname = new.name
    elif how == "add":
        user.groups = sorted(set(user.groups) | {gid})
        grp = touch(gid)
        grp.users = sorted(set(grp.users) | {uid})
    else:
        user.groups = [g for g in user.groups if g != gid]
        grp = touch(gid)
        grp.users = [u for u in grp.users if u != uid]
    _write_user(user)
    for grp in changed.values():
        _write_group(grp)
    return user, list(changed.values())


def _insert_group(group: Group, oid: int | None = None) -> Group:
    existing = pools.oid_by_name(GroupRow, group.name)
    if existing is not None:
        raise errors.internal(f"NAME is already taken by GROUP {existing}.")
    group.id = oid if oid is not None else pools.next_oid("group_pool", FIRST_GROUP_ID)
    pools.insert(GroupRow, group.id, _group_meta(group), userdoc.group_xml(group))
    return group


def _read_acl() -> list[AclRule]:
    return [AclRule(r.oid, r.userset, r.resource, r.rights, r.zone)
            for r in AclRow.select().order_by(AclRow.oid)]


def _add_rule(rule: AclRule) -> None:
    oid = pools.next_oid("acl", len(default_acl_rules()))
    AclRow.insert(oid=oid, userset=rule.user, resource=rule.resource, rights=int(rule.rights),
                  zone=rule.zone).execute()


def _delete_rules(doomed: Callable[[AclRule], bool]) -> None:
    for rule in _read_acl():
        if doomed(rule):
            AclRow.delete().where(AclRow.oid == rule.oid).execute()


def _insert_group_with_vdc_rules(group: Group) -> tuple[Group, list[AclRule]]:
    """GroupAllocate: the new group joins the default VDC, which holds every cluster
    of zone 0, so it gets that VDC's cluster rules (host, net, datastore)."""
    group = _insert_group(group)
    for rule in vdc_group_rules(group.id):
        _add_rule(rule)
    return group, _read_acl()


def _delete_group(gid: int) -> list[AclRule]:
    group = _read_group(gid)
    if group.users:
        raise errors.action(f"Cannot delete group. Group {gid} is not empty.")
    pools.delete(GroupRow, gid)
    quotas.drop(quotas.GROUP, gid)
    # AclManager::del_gid_rules (the VDC's rules for the group go with them).
    _delete_rules(lambda r: r.user == GROUP_ID | gid
                  or r.resource & (TYPE_MASK | ID_MASK) == GROUP_ID | gid)
    return _read_acl()


def bootstrap_identity(oneadmin_name: str, oneadmin_password: str,
                       serveradmin_secret: str) -> None:
    """Create groups 0/1, users 0/1 and the default ACLs on an empty database."""
    for oid, name in ((ONEADMIN_GROUP, "oneadmin"), (USERS_GROUP, "users")):
        _insert_group(Group(id=oid, name=name), oid=oid)
    pools.next_oid("group_pool", FIRST_GROUP_ID - 1)
    for oid, name, driver, secret in (
        (0, oneadmin_name, CORE, oneadmin_password),
        (1, "serveradmin", SERVER_CIPHER, serveradmin_secret),
    ):
        user = User(id=oid, gid=ONEADMIN_GROUP, groups=[ONEADMIN_GROUP], gname="oneadmin",
                    name=name, password=sha256_hex(secret), auth_driver=driver, enabled=1)
        user.template.set("TOKEN_PASSWORD", sha256_hex(secrets.token_hex(32)))
        _insert_user(user, oid=oid)
    pools.next_oid("user_pool", FIRST_USER_ID - 1)
    for rule in default_acl_rules():
        AclRow.insert(oid=rule.oid, userset=rule.user, resource=rule.resource,
                      rights=int(rule.rights), zone=rule.zone).execute()
