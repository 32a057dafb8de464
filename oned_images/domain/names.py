"""Object name rules shared by images, datastores, users and groups."""

from __future__ import annotations

# PoolObjectSQL::name_is_valid: these characters and control chars are refused.
FORBIDDEN = set("&|:\\\";/'#{}$<>") | {"\t", "\n", "\v", "\f", "\r"}
USER_FORBIDDEN = FORBIDDEN | {" "}
MAX_NAME = 128


def name_error(name: str, forbidden: set[str] = FORBIDDEN) -> str | None:
    """oned's text for an invalid object name, or None when it is valid."""
    if not name:
        return "Invalid NAME, it cannot be empty"
    for ch in name:
        if ch in forbidden or (ord(ch) < 0x20):
            return f"Invalid NAME, char '{ch}' is not allowed"
    if len(name.encode("utf-8")) > MAX_NAME:
        return f"Invalid NAME, max length is {MAX_NAME} chars"
    return None

