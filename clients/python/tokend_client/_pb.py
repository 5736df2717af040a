"""The generated protobuf and gRPC modules, imported as a subpackage."""

from typing import Any

from tokend_client._gen.tokend.v1 import tokend_pb2 as pb
from tokend_client._gen.tokend.v1 import tokend_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc", "stub"]


def stub(channel: Any) -> Any:
    """The TokenService stub on a sync or a grpc.aio channel."""
    return pb_grpc.TokenServiceStub(channel)  # type: ignore[no-untyped-call]
