"""Runs a Python program on this node as if ``python ARGS`` had been typed on its home node.

mosixd starts ``INTERPRETER [OPTIONS] <dir>/mosrun/runtime.py ARGS`` in a scratch directory,
ARGS being ``script.py ...``, ``-c CODE ...``, ``-m MODULE ...`` or ``-`` (stdin), with
MOSIX_RUNTIME_FD (a TCP stream straight to the user's mosrun), MOSIX_HOME_CWD,
MOSIX_PROGRAM, MOSIX_STDOUT_TTY, MOSIX_STDERR_TTY, MOSIX_TASK_ID, MOSIX_HOME_NODE and
MOSIX_NODE in the environment. ``mosrun.program`` starts the program and ends it as python
would; ``mosrun.proxyfs`` and ``mosrun.proxyos`` make its files and modules those of home.

This file is compiled at every start (a script's bytecode is never cached), so it only loads
those modules, by path and from their cached bytecode, which also works where the ``mosrun``
package is not installed, then hands over. Standard library only.
"""
_MAIN_KEYS = tuple(globals())  # what python puts in a script's __main__, in its order

import os  # noqa: E402
import sys  # noqa: E402


def _load(name: str, here: str) -> object:
    """Import ``mosrun.<name>`` from this file's directory, whatever sys.path holds."""
    bx = sys.modules["_frozen_importlib_external"]
    full, path = "mosrun." + name, os.path.join(here, name + ".py")
    loader = bx.SourceFileLoader(full, path)
    module = sys.modules["_frozen_importlib"].module_from_spec(
        bx.spec_from_file_location(full, path, loader=loader))
    sys.modules[full] = module
    loader.exec_module(module)
    return module


if __name__ == "__main__":
    _here = os.path.dirname(os.path.abspath(__file__))
    if not sys.flags.safe_path and sys.path:
        del sys.path[0]  # our directory, which python put there for this file
    for _name in ("proxyfs", "proxyos", "program"):
        _load(_name, _here)
    sys.modules["mosrun.program"].main(_MAIN_KEYS, _here, _load.__code__.co_filename)
