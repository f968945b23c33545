"""The sans-IO cores: gossip, the load vector, placement and migration policy, and the state
machine of one move.

Plain classes fed events and clock readings, returning messages and decisions. They are tested
synchronously, and the simulators in ``bench/`` drive the same classes.

May import: the standard library only; no asyncio, gRPC, protobuf, psutil or clock of their own,
and nothing else of mosix.
"""
