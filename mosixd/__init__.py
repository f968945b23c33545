"""mosixd: the mosix node daemon, in layers from the bottom up:

- ``mosixd.core``: the sans-IO cores (gossip, load vector, placement, rebalancing, the move's
  state machine), plain classes fed events and clock readings;
- ``mosixd.settings``: the node's configuration and where a local cluster is described;
- ``mosixd.wire``: the gRPC contract (generated), conversions to and from the core types, and
  the credentials every call carries;
- ``mosixd.host``: the host side of tasks: the processes this node runs for their homes;
- ``mosixd.home``: the home side of tasks: sessions with mosrun, placement, moves, checkpoints;
- ``mosixd.daemon``: the node process that wires them together: loops, servicers, load
  sampling, ``mosixd --local N`` and ``main``.

Imports only point down this list (``mosrun.runtime``, the task runtime, is below all of them).
"""

__version__ = "0.1.0"
