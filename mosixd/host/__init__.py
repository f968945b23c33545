"""The host side of tasks: the processes this node runs for their home nodes.

One gRPC stream per task from its home carries the control; the task's stdout, stderr and file
channel are connected straight to the user's mosrun before it starts. Starting a task goes
through a small helper process (no fork in the daemon), and a Python task's runtime speaks to
this side over a control socket about checkpoints and moves.

May import: ``mosrun.runtime`` (framing, the move's checkpoint stream), ``mosixd.core`` and
``mosixd.wire``; grpc, asyncio and psutil.
"""
