"""Runs a Python program on this node as if ``python ARGS`` had been typed on its home node.

mosixd starts ``INTERPRETER [OPTIONS] <dir>/mosrun/runtime/launch.py ARGS`` in a scratch
directory, ARGS being ``script.py ...``, ``-c CODE ...``, ``-m MODULE ...`` or ``-`` (stdin),
with MOSIX_RUNTIME_FD (a TCP stream straight to the user's mosrun), MOSIX_HOME_CWD,
MOSIX_PROGRAM, MOSIX_STDOUT_TTY, MOSIX_STDERR_TTY, MOSIX_TASK_ID, MOSIX_HOME_NODE and
MOSIX_NODE in the environment. :mod:`mosrun.runtime.program` starts the program and ends it as
python would; the proxy modules make its files and modules those of home.

This file is compiled at every start (a script's bytecode is never cached), so it only makes
this ``mosrun`` package importable, by path (which also works where the interpreter does not
have it installed, and never puts a directory on the program's ``sys.path``), then hands
over. Standard library only.
"""
_MAIN_KEYS = tuple(globals())  # what python puts in a script's __main__, in its order

import os  # noqa: E402
import sys  # noqa: E402


def _load_package(name: str, directory: str) -> None:
    """Import the package in ``directory`` as ``name``, whatever sys.path holds: its modules
    are imported by name from then on, from their cached bytecode."""
    bx = sys.modules["_frozen_importlib_external"]
    init = os.path.join(directory, "__init__.py")
    spec = bx.spec_from_file_location(name, init, submodule_search_locations=[directory])
    module = sys.modules["_frozen_importlib"].module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    _here = os.path.dirname(os.path.abspath(__file__))
    if not sys.flags.safe_path and sys.path:
        del sys.path[0]  # our directory, which python put there for this file
    _load_package("mosrun", os.path.dirname(_here))
    sys.modules["mosrun.runtime.launch"] = sys.modules["__main__"]  # the program gets a new __main__
    from mosrun.runtime import program

    program.main(_MAIN_KEYS, _here, _load_package.__code__.co_filename)
