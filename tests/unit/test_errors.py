"""Errors cross process boundaries intact: a servicer's verdict is never mistaken for a dead peer."""

from __future__ import annotations

import grpc

from mlxserve.services.common.errors import Busy, NotFound, Unavailable, from_rpc_error, grpc_status


class _Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


def _over_the_wire(err) -> grpc.RpcError:
    code, details, meta = grpc_status(err)
    return _Failure(code, details, meta)


def test_a_servicer_unavailable_mentioning_connect_keeps_its_message() -> None:
    err = from_rpc_error(_over_the_wire(Unavailable("cannot reach registry 127.0.0.1:9: Connection refused")), service="store")
    assert isinstance(err, Unavailable)
    assert err.message == "cannot reach registry 127.0.0.1:9: Connection refused"


def test_a_transport_failure_names_the_service_that_is_down() -> None:
    err = from_rpc_error(_Failure(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), service="store")
    assert isinstance(err, Unavailable)
    assert err.message.startswith("the store service is not reachable")


def test_retry_after_and_kind_survive_the_round_trip() -> None:
    err = from_rpc_error(_over_the_wire(Busy("queue full", retry_after=2.5)))
    assert isinstance(err, Busy) and err.retry_after == 2.5
    assert isinstance(from_rpc_error(_over_the_wire(NotFound("model 'x' not found"))), NotFound)
