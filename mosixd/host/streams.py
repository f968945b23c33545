"""The task's streams to the user's mosrun at home, opened before the task starts.

stdout, stderr and a Python task's file channel each get one TCP connection straight to the
mosrun that launched the task (``mosrun.commands.dataplane``); each opens with the stream's
greeting and token (``mosrun.runtime.frames``). The task's stdin is a pipe this node writes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

from mosixd.host.hosted import SpawnError
from mosixd.wire import mosix_pb2 as pb
from mosrun.runtime import frames, netaddr

log = logging.getLogger("mosixd.host.streams")

CONNECT_TIMEOUT = 10.0    # to open the task's streams to its home's mosrun


class _PipeEnd:
    """A pipe end for uvloop's ``connect_write_pipe``: libuv closes the descriptor itself, and
    uvloop would close it again through the file object it is given. When the number has been
    reused meanwhile, that second close takes another thread's descriptor (uvloop issue 763):
    so this object's ``close`` leaves it alone."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        pass


async def stdin_writer(stdin_fd: int) -> asyncio.StreamWriter:
    """Our end of the child's stdin pipe as an asyncio stream (writes honour flow control)."""
    loop = asyncio.get_running_loop()
    uvloop = type(loop).__module__.startswith("uvloop")
    pipe = _PipeEnd(stdin_fd) if uvloop else os.fdopen(stdin_fd, "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), pipe)
    return asyncio.StreamWriter(transport, protocol, None, loop)


async def open_streams(spec: pb.TaskSpec) -> list[socket.socket]:
    """Connect the task's stdout, stderr and (a Python task's) file channel to the user's
    mosrun at home, all at once; raises SpawnError naming the home endpoint."""
    if not spec.streams_to or len(spec.streams_token) != frames.STREAM_TOKEN_SIZE:
        raise SpawnError("the start names no home endpoint for the task's output", retry=False)
    kinds = ("stdout", "stderr", "files") if spec.python else ("stdout", "stderr")
    results = await asyncio.gather(*(connect_stream(spec, kind) for kind in kinds), return_exceptions=True)
    streams = [r for r in results if isinstance(r, socket.socket)]
    failure = next((r for r in results if not isinstance(r, socket.socket)), None)
    if failure is None:
        return streams
    for sock in streams:
        sock.close()
    if not isinstance(failure, (OSError, TimeoutError)):
        raise failure
    why = (f"no answer in {CONNECT_TIMEOUT:g} s" if isinstance(failure, TimeoutError)
           else failure.strerror or str(failure))
    log.warning("task %s: cannot open its streams to %s: %s", spec.task_id, spec.streams_to, why)
    raise SpawnError(f"cannot open the task's streams to its home at {spec.streams_to} ({why})")


async def connect_stream(spec: pb.TaskSpec, kind: str) -> socket.socket:
    """One stream: connect, greet with the token, take mosrun's answer. Blocking afterwards,
    as the task expects of its fds."""
    loop = asyncio.get_running_loop()
    host, port = netaddr.split(spec.streams_to)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await loop.sock_connect(sock, (host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # lines and requests go at once
            await loop.sock_sendall(sock, frames.greeting(spec.task_id, spec.epoch, kind, spec.streams_token))
            answer = await loop.sock_recv(sock, len(frames.STREAM_ACK))
        if answer != frames.STREAM_ACK:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"mosrun refused the task's {kind} stream")
        sock.setblocking(True)
        return sock
    except BaseException:
        sock.close()
        raise
