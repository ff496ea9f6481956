"""Request limits: body size (413), time per request (504), queue length (503 + Retry-After).

Image pixel count (422) is checked by labeler.media.image.decode_image from the header,
before any pixel is decoded. The queue length is Ray Serve's own `max_queued_requests`:
past it a handle call raises BackPressureError at once, which becomes a 503 telling the
caller when to retry instead of letting requests pile up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request

from labeler.serve.errors import ApiError

# Seconds a caller is asked to wait after a 503: a full queue of a fast model drains within
# about a second; a longer wait would leave the replicas idle.
RETRY_AFTER_S = 1


async def read_body(request: Request, max_bytes: int, idle_s: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `max_bytes`:
    from Content-Length before reading, or while streaming a body sent without one; with
    408 when no byte of it arrives for `idle_s` seconds (a client that stalled, or declared
    more than it sends, would otherwise hold the request open for ever)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {max_bytes}")
    chunks, size = [], 0
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), idle_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ApiError(408, f"request body stalled: no byte for {idle_s:g} s after "
                                f"{size} of {declared or 'an unknown number of'} bytes") from None
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette's request.form() and .json() read this cached body instead of the stream,
    # which is spent; this is where Request.body() itself caches it.
    request._body = body
    return body


async def call_with_limits(response, timeout_s: float, model: str):
    """Await a DeploymentResponse; 504 past `timeout_s` (the request is cancelled, so it
    does not hold a batch slot), 503 with Retry-After when the model's queue is full."""

    async def result():
        return await response

    try:
        return await asyncio.wait_for(result(), timeout_s)
    except asyncio.TimeoutError:
        response.cancel()
        raise ApiError(504, f"model {model!r} did not answer within {timeout_s:g} s") from None
    except BackPressureError:
        raise ApiError(503, f"model {model!r} has a full queue; retry in {RETRY_AFTER_S} s",
                       {"Retry-After": str(RETRY_AFTER_S)}) from None
    except RayActorError as err:  # the replica died (out of memory, a crash): Serve restarts it
        raise ApiError(503, f"model {model!r}: the replica answering stopped "
                            f"({type(err).__name__}); Serve restarts it, retry in "
                            f"{RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)}) from None


class PixelBudget:
    """At most `budget` image pixels being decoded at once (one ingress replica's): decoding
    holds several bytes a pixel (a 49-megapixel PNG peaked at 750 MB), and the thread pool
    runs cores + 4 decodes at once. A decode over the budget waits its turn, first come
    first served, instead of failing; one image over the whole budget waits for it all."""

    def __init__(self, budget: int):
        self.budget = budget
        self.in_use = 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @asynccontextmanager
    async def hold(self, pixels: int):
        pixels = min(pixels, self.budget)
        await self._acquire(pixels)
        try:
            yield
        finally:
            self.in_use -= pixels
            self._grant()

    async def _acquire(self, pixels: int) -> None:
        if not self._waiting and self.in_use + pixels <= self.budget:
            self.in_use += pixels
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append((pixels, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted as it was cancelled
                self.in_use -= pixels
            else:
                self._waiting.remove((pixels, turn))
            self._grant()
            raise

    def _grant(self) -> None:
        while self._waiting and self.in_use + self._waiting[0][0] <= self.budget:
            pixels, turn = self._waiting.popleft()
            self.in_use += pixels
            turn.set_result(None)
