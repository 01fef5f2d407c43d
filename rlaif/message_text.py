"""Text for messages and logs: long text clipped to one line, URLs without the credentials they may carry."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit


def clip(text: Any, limit: int = 300) -> str:
    """`text` on one line (runs of whitespace made one space), cut to `limit` characters with "..."."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def redact_url(value: Any) -> Any:
    """A URL (an endpoint's or a database's) without its `user:password@` part; anything else as it is.

    The user goes too: some services take a token as the user name.
    """
    if not isinstance(value, str) or "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:  # a malformed host: nothing of it is shown, in case it holds a password
        return "<a URL that does not parse>"
    if parts.username is None and parts.password is None:
        return value
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    return urlunsplit(parts._replace(netloc=f"{host}:{port}" if port else host))
