"""The node process: ``mosixd`` itself.

It samples the load (psutil), drives the gossip core on a clock, runs the balancer, serves
gRPC for peers and tools (each servicer a few lines), builds the host and home sides of tasks
and hands them what they need, runs ``mosixd --local N``, and parses the command line.

May import: every layer below it (``mosrun.runtime``, ``mosixd.core``, ``mosixd.settings``,
``mosixd.wire``, ``mosixd.host``, ``mosixd.home``). Nothing imports it but ``mosixd.__main__``.
"""
