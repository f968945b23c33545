"""The task runtime: what runs inside a task process, and the byte formats it shares.

The light framing, ``resumable()``/``safepoint()``, the checkpoint format and its direct stream
to a move's target, the proxies that make home files and modules those of a remote task, and
the start of the user's program.

May import: the standard library only, so a task starts in about the time Python itself needs
(never gRPC or protobuf; the picklers and the checksum are imported when first used). Nothing
else of mosix: every other layer builds on this one. ``launch.py`` loads the modules a task
needs at start by path, so they work where the ``mosrun`` package is not installed.
"""
