"""WebSocket masking keys drawn from the OS in blocks, not one system call per frame.

A client masks every frame it sends with 4 fresh random bytes (RFC 6455 §5.3); websockets
draws them with `secrets.token_bytes(4)`: a `getrandom` system call per frame, the biggest
per-frame cost after the socket write itself (bench scale: 5,000 streams, one frame per token).
The keys stay unpredictable — the same OS source, read 4 KiB at a time.
"""

from __future__ import annotations

import os

import websockets.frames

_BLOCK = 4096


class PooledSecrets:
    """What websockets' frames module uses of `secrets`: `token_bytes`."""

    def __init__(self, block: int = _BLOCK) -> None:
        self._block = block
        self._pool = b""
        self._at = 0

    def token_bytes(self, n: int) -> bytes:
        at = self._at
        if at + n > len(self._pool):
            self._pool = os.urandom(max(self._block, n))
            at = 0
        self._at = at + n
        return self._pool[at : at + n]


def install() -> None:
    """Make websockets' frame masking use the pool (idempotent)."""
    if isinstance(getattr(websockets.frames, "secrets", None), PooledSecrets):
        return
    # Only the frames module's reference changes: the handshake key (utils) still comes from
    # `secrets` directly.
    setattr(websockets.frames, "secrets", PooledSecrets())  # noqa: B010 (not exported)
