"""Python programs under mosrun on the rig behave byte for byte like a plain local run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import BIN, LocalRig, wait_for

pytestmark = [pytest.mark.rig, pytest.mark.slow]

PY = sys.executable

CORPUS = {
    "prints.py": """
        import sys
        for i in range(200):
            print("line", i, flush=(i % 3 == 0))
            if i % 50 == 0:
                print("err", i, file=sys.stderr)
        print("no newline at the end", end="")
    """,
    "big_binary.py": """
        import hashlib, sys
        block = hashlib.sha256(b"seed").digest() * 4096
        for i in range(160):
            sys.stdout.buffer.write(bytes([i]) + block)
    """,
    "stdin_to_eof.py": """
        import hashlib, sys
        data = sys.stdin.buffer.read()
        print(len(data), hashlib.sha256(data).hexdigest())
    """,
    "uncaught.py": """
        import helper
        print("before", flush=True)
        helper.explode(3)
    """,
    "exit_three.py": """
        print("bye")
        raise SystemExit(3)
    """,
    "exit_message.py": """
        import sys
        sys.exit("fatal: something went wrong")
    """,
    "killed.py": """
        import os, signal
        print("dying", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
    """,
    "files.py": """
        import json, os, pathlib
        rows = [line.split(",") for line in open("data/input.csv").read().splitlines()]
        os.makedirs("out", exist_ok=True)
        with open("out/result.json", "w") as f:
            json.dump({"rows": len(rows), "total": sum(int(r[1]) for r in rows[1:])}, f)
        with open("out/log.txt", "a") as f:
            f.write("appended\\n")
        pathlib.Path("out/note.txt").write_text("note")
        print(sorted(os.listdir("out")), os.path.exists("data/input.csv"), os.path.isdir("out"))
        print(pathlib.Path("out/note.txt").read_text(), os.stat("out/result.json").st_size > 0)
        try:
            open("data/missing.csv")
        except FileNotFoundError as exc:
            print("error:", exc)
    """,
    "fsync.py": """
        import os
        with open("synced.txt", "w") as f:
            f.write("on disk at home\\n")
            f.flush()
            os.fsync(f)
        print(open("synced.txt").read(), end="")
        os.remove("synced.txt")
    """,
    "imports.py": """
        import helper
        from pkg import sub
        print(helper.double(21), sub.NAME)
    """,
}

HELPERS = {
    "helper.py": """
        def double(x):
            return 2 * x

        def explode(n):
            if n == 0:
                raise ValueError("exploded at the bottom")
            explode(n - 1)
    """,
    "pkg/__init__.py": "",
    "pkg/sub.py": "NAME = 'sub-module'\n",
    "data/input.csv": "name,value\na,1\nb,2\nc,39\n",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name, text in {**CORPUS, **HELPERS}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def fresh_copy(corpus: Path, where: Path) -> Path:
    shutil.copytree(corpus, where)
    return where


def exit_status(code: int) -> int:
    """What a shell shows: a death by signal N is 128+N."""
    return 128 - code if code < 0 else code


@pytest.mark.parametrize("script", sorted(CORPUS))
def test_same_output_as_a_local_run(shared_rig3: LocalRig, corpus: Path, tmp_path: Path, script: str) -> None:
    stdin = bytes(range(256)) * 4000 if script == "stdin_to_eof.py" else b""
    local_dir = fresh_copy(corpus, tmp_path / "local")
    remote_dir = fresh_copy(corpus, tmp_path / "remote")
    local = subprocess.run([PY, script], cwd=local_dir, input=stdin, capture_output=True, timeout=60)
    remote = shared_rig3.mosrun("-r", "n2", PY, script, cwd=remote_dir, input=stdin)
    assert remote.stdout == local.stdout
    assert remote.stderr.replace(str(remote_dir).encode(), b"DIR") == local.stderr.replace(str(local_dir).encode(), b"DIR")
    assert remote.returncode == exit_status(local.returncode)
    if script == "files.py":
        for name in ("out/result.json", "out/log.txt", "out/note.txt"):
            assert (remote_dir / name).read_bytes() == (local_dir / name).read_bytes()


def test_code_and_module_forms(shared_rig3: LocalRig, corpus: Path, tmp_path: Path) -> None:
    work = fresh_copy(corpus, tmp_path / "w")
    for args in (["-c", "import sys; print(sys.argv); print(1/0)", "a", "b"], ["-m", "helper"],
                 ["-u", "-c", "import helper; print(helper.double(4))"]):
        local = subprocess.run([PY, *args], cwd=work, capture_output=True, timeout=60)
        remote = shared_rig3.mosrun("-r", "n3", PY, *args, cwd=work)
        assert (remote.stdout, remote.stderr, remote.returncode) == (local.stdout, local.stderr, local.returncode)


def test_missing_script_is_reported_as_python_does(shared_rig3: LocalRig, tmp_path: Path) -> None:
    local = subprocess.run([PY, "absent.py"], cwd=tmp_path, capture_output=True, timeout=30)
    remote = shared_rig3.mosrun("-r", "n2", PY, "absent.py", cwd=tmp_path)
    assert (remote.stdout, remote.stderr, remote.returncode) == (local.stdout, local.stderr, 2)


def test_ctrl_c_interrupts_the_remote_python_task(shared_rig3: LocalRig, tmp_path: Path) -> None:
    script = tmp_path / "wait.py"
    script.write_text("import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([str(BIN / "mosrun"), "-r", "n2", PY, "wait.py"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=shared_rig3.env)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT
    assert stderr.startswith(b"Traceback (most recent call last):\n")
    assert stderr.endswith(b"KeyboardInterrupt\n")
    wait_for(lambda: not shared_rig3.tasks("n2"), 10)


def test_a_missing_third_party_module_names_the_node(shared_rig3: LocalRig, tmp_path: Path) -> None:
    out = shared_rig3.mosrun("-r", "n3", PY, "-c", "import no_such_package_anywhere", cwd=tmp_path)
    assert out.returncode == 1
    assert b"ModuleNotFoundError: No module named 'no_such_package_anywhere'" in out.stderr
    assert b"n3" in out.stderr
