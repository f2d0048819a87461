"""A fix for notebook executions that stall for exactly the per-cell timeout (course tooling, not course material).

Every place this kit executes notebooks with nbclient — the book build (myst-nb through jupyter-cache) and the
notebook tests — talks to its kernel through jupyter_client's ``AsyncZMQSocketChannel.get_msg``, which waits with one
``await socket.poll(timeout)`` of pyzmq's asyncio integration. That integration watches ZeroMQ's *edge-triggered*
file descriptor; when the edge is consumed elsewhere (reading ``zmq.EVENTS`` has that side effect), a message that
is already queued wakes no one, and the wait ends only when the timeout fires (pyzmq then checks with a real
``zmq_poll`` and finds the message). For a cell, that is a stall of exactly the cell timeout (300 s in the book)
followed by a normal finish. It showed most in cells that display ipywidgets, which send many messages at once.

Seen with nbclient 0.11.0, jupyter_client 8.10.0, pyzmq 27.3.0, with ipykernel 7.4.0 and 6.29.5 alike (so pinning
``ipykernel<7`` is not the fix). Upstream: nbclient #312 ("when cell contains ipywidget, execute cell will sometimes
block"), jupyter_client #922, pyzmq #2173 (reading EVENTS drains the signaler; closed without a fix). No released
version fixes it as of these versions; when one does, name it here and in pyproject.toml and delete this module.

:func:`install` makes ``get_msg`` wait in slices of :data:`SLICE_S` seconds, each ending in pyzmq's real
``zmq_poll`` check, so a missed wake-up costs at most one slice. ``tests/test_kernel_client.py`` executes an
explorer chapter repeatedly under load with a short cell timeout and fails on a stall.
"""

from __future__ import annotations

import time

SLICE_S = 0.5
_INSTALLED = "_minimoe_sliced_poll"


def install() -> None:
    """Replace ``jupyter_client.channels.AsyncZMQSocketChannel.get_msg`` by the sliced wait (idempotent)."""
    from queue import Empty

    from jupyter_client.channels import AsyncZMQSocketChannel

    if getattr(AsyncZMQSocketChannel.get_msg, _INSTALLED, False):
        return

    async def get_msg(self, timeout: float | None = None) -> dict:
        """Gets a message if there is one that is ready, waiting at most `timeout` seconds (None: for ever)."""
        assert self.socket is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_S if deadline is None else min(SLICE_S, max(0.0, deadline - time.monotonic()))
            # A slice that times out ends in zmq_poll(0) inside pyzmq, which finds a message the FD did not announce.
            if await self.socket.poll(int(left * 1000) or 1):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    setattr(get_msg, _INSTALLED, True)
    AsyncZMQSocketChannel.get_msg = get_msg


def is_installed() -> bool:
    from jupyter_client.channels import AsyncZMQSocketChannel

    return bool(getattr(AsyncZMQSocketChannel.get_msg, _INSTALLED, False))
