"""The command-line tools: ``mosrun``, ``mosmon``, ``mosctl``, ``mosps``, ``migrate``, and the
client that finds and talks to a daemon.

The top layer. May import: ``mosrun.runtime`` (framing), ``mosixd.settings`` (where a local
cluster is, the system config), ``mosixd.wire`` (messages and credentials of the gRPC tools)
and ``mosixd.core`` (the types behind them); never the daemon's own layers, which run in
another process. ``mosrun`` itself (``mosrun.commands.mosrun``, ``dataplane``, ``homefs``) is
standard library only: it starts at every launch and serves its task's streams and files.
"""
