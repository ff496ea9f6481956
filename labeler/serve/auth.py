"""API tokens: where they come from, how a request proves one, and where the server binds.

Tokens come from the serve config (`api_tokens`) and the environment variable
LABELER_API_TOKENS (comma-separated). A request carries one as `Authorization: Bearer <token>`;
Label Studio's ML backend settings send basic auth, so `Basic base64(user:token)` is accepted
too, with any user name. Tokens are compared with hmac.compare_digest against every
configured token, so the time taken does not tell how much of a guess was right.

With no token configured the API is open, so the server binds to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os

ENV_VAR = "LABELER_API_TOKENS"
LOOPBACK = "127.0.0.1"


def configured_tokens(config_tokens: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """The config's tokens plus the environment's, blanks dropped, in order, no duplicates."""
    environ = os.environ if environ is None else environ
    from_env = environ.get(ENV_VAR, "").split(",")
    tokens = [t.strip() for t in [*config_tokens, *from_env]]
    return list(dict.fromkeys(t for t in tokens if t))


def bind_host(requested: str, tokens: list[str]) -> tuple[str, str | None]:
    """(host to bind, a notice for the operator or None). No tokens: loopback only."""
    if tokens:
        return requested, None
    if requested == LOOPBACK:
        return LOOPBACK, (f"no API token configured ({ENV_VAR} or api_tokens): "
                          f"the API is open, so it listens on {LOOPBACK} only")
    return LOOPBACK, (f"no API token configured ({ENV_VAR} or api_tokens): refusing to listen "
                      f"on {requested}; listening on {LOOPBACK} only")


def presented_token(authorization: str | None) -> str | None:
    """The token in an Authorization header value (Bearer, or Basic's password), or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def is_authorized(authorization: str | None, tokens: list[str]) -> bool:
    """True when no token is configured, or the header carries one of them."""
    if not tokens:
        return True
    token = presented_token(authorization)
    if token is None:
        return False
    # Compare with every token, without stopping early: the time taken does not depend on
    # which token (if any) matched.
    matched = False
    for expected in tokens:
        matched |= hmac.compare_digest(token.encode(), expected.encode())
    return matched
