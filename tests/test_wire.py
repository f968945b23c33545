"""The committed protobuf/gRPC modules match proto/mosix.proto."""

from __future__ import annotations

from pathlib import Path

from mosixd.wire import regenerate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    fresh = regenerate.regenerate(tmp_path)
    assert [p.name for p in fresh] == ["mosix_pb2.py", "mosix_pb2.pyi", "mosix_pb2_grpc.py"]
    committed = Path(regenerate.__file__).parent
    for path in fresh:
        assert path.read_text() == (committed / path.name).read_text(), (
            f"{path.name} is stale: run python -m mosixd.wire.regenerate")
