"""Where things are: a node's configuration (TOML file and flags) and the description of this
user's running ``mosixd --local`` cluster.

Shared by the daemon and the command-line tools. May import: the standard library and
``mosrun.runtime`` (how an address is written), so that ``mosrun`` can find its cluster without
loading the daemon.
"""
