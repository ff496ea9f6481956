"""The one exception the API turns into an HTTP answer: a status and a message for the caller."""

from __future__ import annotations


class ApiError(Exception):
    """status: the HTTP status (4xx for the caller's mistakes, 503/504 for load);
    message: what went wrong, in words the caller can act on; headers: e.g. Retry-After."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
