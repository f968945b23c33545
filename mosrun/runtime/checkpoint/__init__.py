"""Checkpoints of a task's resumable state: the format, pickling, checksums and files.

- :mod:`.container`: the self-describing format (header, pickle, buffers), ``dumps``/``loads``;
- :mod:`.pickling`: which pickler, what is refused, which attribute cannot be pickled;
- :mod:`.checksum`: the body's checksum (XXH3-64, CRC-32, SHA-256);
- :mod:`.files`: checkpoint files, written atomically and pruned to the newest few;
- :mod:`.errors`: what can go wrong, one line each.

Their public names are here too: ``from mosrun.runtime import checkpoint`` then
``checkpoint.dumps(...)``. Standard library only at import; cloudpickle, dill and xxhash are
imported when first used.
"""

from mosrun.runtime.checkpoint.checksum import BodySum, body_sum
from mosrun.runtime.checkpoint.container import (FORMAT_VERSION, MAGIC, PREFIX_SIZE, CheckpointHeader,
                                                 check_sum, dumps, header_size, loads, read_header,
                                                 warm_up)
from mosrun.runtime.checkpoint.errors import (CheckpointError, CorruptCheckpoint, IncompatibleCheckpoint,
                                              UnpicklableState)
from mosrun.runtime.checkpoint.files import (checkpoint_path, dump_to_file, keep_last, list_checkpoints,
                                             load_from_file)

__all__ = ["BodySum", "CheckpointError", "CheckpointHeader", "CorruptCheckpoint", "FORMAT_VERSION",
           "IncompatibleCheckpoint", "MAGIC", "PREFIX_SIZE", "UnpicklableState", "body_sum", "check_sum",
           "checkpoint_path", "dump_to_file", "dumps", "header_size", "keep_last", "list_checkpoints",
           "load_from_file", "loads", "read_header", "warm_up"]
