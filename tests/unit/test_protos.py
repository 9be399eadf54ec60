"""The committed gRPC stubs are exactly what grpcio-tools makes of the .proto files."""

from __future__ import annotations

import importlib.util
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
STUB_DIR = ROOT / "protos" / "mlxserve" / "v1"


def _load_generator():
    spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    fresh = _load_generator().generate(tmp_path)
    assert fresh, "protoc produced no stubs"
    fresh_names = {p.name for p in fresh}
    committed_names = {p.name for p in STUB_DIR.glob("*_pb2*.py*")}
    assert fresh_names == committed_names, "stub files differ from the .proto set: run `python protos/generate.py`"
    for p in fresh:
        committed = (STUB_DIR / p.name).read_text()
        assert p.read_text() == committed, f"{p.name} is stale: run `python protos/generate.py`"


def test_every_service_in_the_contract_is_importable() -> None:
    from mlxserve.v1 import store_pb2_grpc, supervisor_pb2_grpc, worker_pb2_grpc

    assert hasattr(store_pb2_grpc, "StoreServicer")
    assert hasattr(supervisor_pb2_grpc, "SupervisorServicer")
    assert hasattr(worker_pb2_grpc, "WorkerServicer")


def test_token_event_frames_round_trip() -> None:
    from mlxserve.v1 import frames

    ev = frames.TokenEvent("req-1", "Hé", [1, 2], done=True, done_reason="stop", stats=frames.Stats(prompt_eval_count=3, eval_count=2))
    assert frames.decode(frames.encode(ev)) == ev

