"""Which local paths an image may be copied from (SAFE_DIRS / RESTRICTED_DIRS).

The fs driver checks this too; doing it in one.image.allocate as well turns a
late ERROR state into an immediate refusal.  Unlike OpenNebula's ``grep -E
"^dir"`` the match is by whole path components, so ``/var/tmp`` does not
admit ``/var/tmpfoo``, and the path is resolved (symlinks, ``..``) first.
"""

from __future__ import annotations

import os


def _under(path: str, directory: str) -> bool:
    directory = os.path.normpath(directory)
    if directory == "/":
        return True
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def protected_paths(config) -> tuple[str, ...]:
    """The daemon's own files: never readable through an image, whatever SAFE_DIRS says.

    The database (and its journal/wal files), the configuration file and its
    directory, the credentials (ONE_AUTH file, VAR_LOCATION/.one), the log and the
    whole VAR_LOCATION.  Checked here at allocate time and passed to every driver
    script as ONED_PROTECTED_PATHS, where the fs driver checks the file it opened.
    """
    from oned_images.service import one_auth_path  # (service builds on this module)

    db = config.db_path
    paths = [config.var_location, config.staging_dir, db, db + "-journal", db + "-wal",
             db + "-shm",
             config.log_file, os.path.join(config.var_location, ".one"), str(one_auth_path())]
    if config.source_file:
        paths += [config.source_file, os.path.dirname(config.source_file)]
    return tuple(dict.fromkeys(p for p in paths if p))


def path_allowed(path: str, safe_dirs: str, restricted_dirs: str,
                 always_restricted: tuple[str, ...] = ()) -> bool:
    """True if ``path`` may be read: under a SAFE dir, or under no RESTRICTED dir."""
    if is_remote(path):
        return True
    resolved = os.path.realpath(local_path(path))
    if any(_under(resolved, d) for d in always_restricted if d):
        return False
    if any(_under(resolved, d) for d in safe_dirs.split() if d):
        return True
    return not any(_under(resolved, d) for d in restricted_dirs.split() if d)


def staged_env(config, path: str) -> dict[str, str]:
    """The one allowance through the protection above: the copy of an uploaded image
    may read (and move) exactly its own staged file, named by ONED_STAGED_FILE; any
    other PATH under the staging directory stays refused (the file must sit directly
    in it, or in a worker's ``w<k>`` directory there: domain/uploads.py)."""
    staging = os.path.realpath(config.staging_dir)
    where = os.path.dirname(os.path.realpath(path)) if path else ""
    if where and (where == staging or (os.path.dirname(where) == staging
                                       and config.is_worker_dir(os.path.basename(where)))):
        return {"ONED_STAGED_FILE": os.path.realpath(path)}
    return {}
