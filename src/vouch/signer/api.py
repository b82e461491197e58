"""notary-signer's RPCs over a :class:`~vouch.keyservice.base.KeyService`.

Status codes and messages are notary-signer's, because notary-server passes
them through to its clients (an unknown timestamp key shows up in a failed
publish as ``rpc error: code = NotFound desc = key <id> not found``):

* CreateKey with an algorithm other than ecdsa/ed25519 → UNKNOWN
  ``algorithm <alg> not supported for create key``;
* GetKeyInfo of an unknown key → NOT_FOUND ``key <id> not found``;
* Sign with an unknown key → NOT_FOUND ``signing key not found: <id>``;
* DeleteKey succeeds for unknown keys.

Where notary-signer answers INTERNAL for everything else, this signer says
UNAVAILABLE when its database is unreachable, so a client can tell "retry
later" from "misconfigured". Requests and responses are logged by key ID and
peer only: messages, signatures and key material never reach a log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

from vouch.keyservice.base import (
    KeyDecryptionError,
    KeyNotFoundError,
    KeyService,
    KeyServiceError,
    KeyServiceUnavailableError,
    UnsupportedAlgorithmError,
)
from vouch.signer import protocol
from vouch.signer._grpc import grpc
from vouch.signer.protocol import health_pb, pb
from vouch.tuf import keys as tufkeys

log = logging.getLogger("vouch.signer")

#: How long a health probe may wait for the key database before reporting NOT_SERVING.
HEALTH_PROBE_TIMEOUT: Final = 3.0
#: How often Watch re-probes the key database.
WATCH_INTERVAL: Final = 5.0

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class _Failure(Exception):
    """An RPC outcome other than success: the status the client gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _key_info(key_id: str, algorithm: str) -> pb.KeyInfo:
    return pb.KeyInfo(keyID=pb.KeyID(ID=key_id), algorithm=pb.Algorithm(algorithm=algorithm))


def _peer(context: Context) -> str:
    """Who is asking, for the audit log: the client certificate's CN when there is one."""
    try:
        names = context.auth_context().get("x509_common_name")
    except Exception:  # an odd transport must not fail the request over a log line
        names = None
    if names:
        return b",".join(names).decode("utf-8", "replace")
    return context.peer()


class SignerAPI:
    """The KeyManagement, Signer and Health services of one signer process."""

    def __init__(self, keys: KeyService, *, probe_timeout: float = HEALTH_PROBE_TIMEOUT) -> None:
        self.keys = keys
        self.probe_timeout = probe_timeout

    # -- KeyManagement ---------------------------------------------------------------

    async def create_key(self, request: pb.CreateKeyRequest, context: Context) -> pb.PublicKey:
        algorithm = request.algorithm
        if algorithm not in (tufkeys.ECDSA, tufkeys.ED25519):
            raise _Failure(
                grpc.StatusCode.UNKNOWN, f"algorithm {algorithm} not supported for create key"
            )
        key = await self.keys.create_key(request.gun, request.role, algorithm)
        log.info(
            "CreateKey: key %s (%s) for %s %s, asked by %s",
            key.keyid,
            algorithm,
            request.gun,
            request.role,
            _peer(context),
        )
        return pb.PublicKey(keyInfo=_key_info(key.keyid, key.keytype), publicKey=key.public_bytes())

    async def delete_key(self, request: pb.KeyID, context: Context) -> pb.Void:
        await self.keys.delete_key(request.ID)
        log.info("DeleteKey: key %s, asked by %s", request.ID, _peer(context))
        return pb.Void()

    async def get_key_info(self, request: pb.KeyID, context: Context) -> pb.GetKeyInfoResponse:
        info = await self.keys.key_info(request.ID)
        if info is None:
            raise _Failure(grpc.StatusCode.NOT_FOUND, f"key {request.ID} not found")
        log.debug("GetKeyInfo: key %s, asked by %s", request.ID, _peer(context))
        return pb.GetKeyInfoResponse(
            keyInfo=_key_info(info.key_id, info.algorithm),
            publicKey=info.key.public_bytes(),
            role=info.role,
        )

    # -- Signer ----------------------------------------------------------------------

    async def sign(self, request: pb.SignatureRequest, context: Context) -> pb.Signature:
        key_id = request.keyID.ID
        signature = await self.keys.sign(key_id, request.content)
        keytype = protocol.METHOD_KEY_TYPES.get(signature.method)
        if keytype is None:  # a key service bug, not a client error
            raise _Failure(grpc.StatusCode.INTERNAL, f"Signing failed for KeyID {key_id}")
        if log.isEnabledFor(logging.INFO):  # the peer's name costs a lookup per call
            log.info(
                "Sign: %d bytes with key %s, asked by %s",
                len(request.content),
                key_id,
                _peer(context),
            )
        return pb.Signature(
            keyInfo=_key_info(signature.keyid, keytype),
            algorithm=pb.Algorithm(algorithm=signature.method),
            content=tufkeys.b64decode(signature.sig, "signature"),
        )

    # -- Health ----------------------------------------------------------------------

    async def serving_status(self, service: str) -> protocol.ServingStatus | None:
        """SERVING while the key store answers; None for a service name we do not have.

        notary-signer reports SERVING unconditionally; probing the store makes
        notary-server's ``Trust operational`` check mean what it says.
        """
        if service not in protocol.HEALTH_NAMES:
            return None
        try:
            await asyncio.wait_for(self.keys.check_health(), self.probe_timeout)
        except (TimeoutError, KeyServiceError) as exc:
            log.warning("health: key store unavailable: %s", exc)
            return protocol.NOT_SERVING
        return protocol.SERVING

    async def health_check(
        self, request: health_pb.HealthCheckRequest, context: Context
    ) -> health_pb.HealthCheckResponse:
        status = await self.serving_status(request.service)
        if status is None:
            raise _Failure(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb.HealthCheckResponse(status=status)

    async def health_watch(
        self, request: health_pb.HealthCheckRequest, context: Context
    ) -> AsyncIterator[health_pb.HealthCheckResponse]:
        """The standard Watch: the status now, then every change, until the client leaves."""
        last: protocol.ServingStatus | None = None
        while True:
            status = await self.serving_status(request.service)
            if status is None:
                status = health_pb.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(WATCH_INTERVAL)

    # -- wiring ----------------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """Generic handlers binding the paths notary-server dials to these methods."""
        unary = grpc.unary_unary_rpc_method_handler
        key_management = grpc.method_handlers_generic_handler(
            protocol.KEY_MANAGEMENT_SERVICE,
            {
                "CreateKey": unary(
                    _guarded("CreateKey", self.create_key),
                    request_deserializer=pb.CreateKeyRequest.FromString,
                    response_serializer=pb.PublicKey.SerializeToString,
                ),
                "DeleteKey": unary(
                    _guarded("DeleteKey", self.delete_key),
                    request_deserializer=pb.KeyID.FromString,
                    response_serializer=pb.Void.SerializeToString,
                ),
                "GetKeyInfo": unary(
                    _guarded("GetKeyInfo", self.get_key_info),
                    request_deserializer=pb.KeyID.FromString,
                    response_serializer=pb.GetKeyInfoResponse.SerializeToString,
                ),
            },
        )
        signer = grpc.method_handlers_generic_handler(
            protocol.SIGNER_SERVICE,
            {
                "Sign": unary(
                    _guarded("Sign", self.sign),
                    request_deserializer=pb.SignatureRequest.FromString,
                    response_serializer=pb.Signature.SerializeToString,
                )
            },
        )
        health = grpc.method_handlers_generic_handler(
            protocol.HEALTH_SERVICE,
            {
                "Check": unary(
                    _guarded("Health/Check", self.health_check),
                    request_deserializer=health_pb.HealthCheckRequest.FromString,
                    response_serializer=health_pb.HealthCheckResponse.SerializeToString,
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.health_watch,
                    request_deserializer=health_pb.HealthCheckRequest.FromString,
                    response_serializer=health_pb.HealthCheckResponse.SerializeToString,
                ),
            },
        )
        return [key_management, signer, health]


def _failure_of(name: str, exc: Exception) -> _Failure:
    """The status a key service exception becomes (messages carry no key material)."""
    if isinstance(exc, _Failure):
        return exc
    if isinstance(exc, KeyNotFoundError):
        return _Failure(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, UnsupportedAlgorithmError):
        return _Failure(grpc.StatusCode.UNKNOWN, str(exc))
    if isinstance(exc, KeyServiceUnavailableError):
        log.warning("%s: key store unavailable: %s", name, exc)
        return _Failure(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, KeyDecryptionError):
        log.error("%s: %s", name, exc)
        return _Failure(grpc.StatusCode.INTERNAL, str(exc))
    if isinstance(exc, ValueError):  # names the table cannot hold
        return _Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    log.error("%s failed: %s: %s", name, type(exc).__name__, exc)
    return _Failure(grpc.StatusCode.INTERNAL, f"{name} failed")


def _guarded(
    name: str, method: Callable[[_Req, Context], Awaitable[_Resp]]
) -> Callable[[_Req, Context], Awaitable[_Resp]]:
    """``method`` with exceptions turned into gRPC statuses (never a bare UNKNOWN
    carrying a Python traceback, which grpc would otherwise send)."""

    async def handler(request: _Req, context: Context) -> _Resp:
        try:
            return await method(request, context)
        except Exception as exc:
            failure = _failure_of(name, exc)
        await context.abort(failure.code, failure.message)

    return handler


__all__ = ["SignerAPI"]
