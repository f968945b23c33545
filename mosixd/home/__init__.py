"""The home side of tasks: what the node where ``mosrun`` was typed does for its tasks.

The session with the user's mosrun, placement and start, the control stream to wherever the
task runs, its moves (driven by the core's state machine), its checkpoints kept at home and
its failover. The daemon builds it and hands it a :class:`~mosixd.home.context.HomeNode`, the
narrow view of the node it needs.

May import: ``mosrun.runtime`` (framing, checkpoint files, the checkpoint stream),
``mosixd.core`` and ``mosixd.wire``; grpc and asyncio. Never the daemon that uses it.
"""
