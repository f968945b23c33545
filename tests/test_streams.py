"""A task's stdin pipe under uvloop: closed once, by libuv, never twice."""

from __future__ import annotations

import asyncio
import gc
import os

import uvloop

from mosixd.host.streams import stdin_writer


def test_the_stdin_pipe_is_closed_once_and_no_later_descriptor_is_taken() -> None:
    async def scenario() -> None:
        for _ in range(100):
            r, w = os.pipe()
            writer = await stdin_writer(w)
            writer.write(b"data")
            await writer.drain()
            writer.close()
            await asyncio.sleep(0.001)
            # The write end is closed (no leak), and its number, now someone else's, stays
            # theirs whatever the transport's and the file object's collection does.
            probe_r, probe_w = os.pipe()
            del writer
            gc.collect()
            await asyncio.sleep(0.001)
            os.fstat(probe_r)
            os.fstat(probe_w)
            assert os.read(r, 10) == b"data" and os.read(r, 10) == b""  # the end came: w was closed
            for fd in (r, probe_r, probe_w):
                os.close(fd)

    uvloop.run(scenario())
