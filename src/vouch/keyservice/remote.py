"""The key service as a client of a notary-signer-compatible signer (gRPC, mutual TLS).

``vouch server`` with ``keys.type: remote`` (or notary-server's config with
``trust_service: {type: remote}``) keeps no private keys: it asks a signer,
either ``vouch signer`` or a real notary-signer, exactly as notary-server
does: same RPCs, same TLS setup (``tls_ca_file`` as the only trust root, the
client certificate and key, ``hostname`` as the TLS server name).

Failure model, which the trust server relies on:

* A signer that is down, unreachable, slow or refusing the handshake raises
  :class:`~vouch.keyservice.base.KeyServiceUnavailableError` within the RPC
  deadline; the server answers 503 for what needs a signature and keeps
  serving stored metadata.
* The gRPC channel reconnects by itself, with a short backoff cap, so a
  restarted signer is used again within seconds without restarting the server.
  After a failed call the next one dials afresh at once instead of waiting for
  grpc's backoff, so the first request after a signer restart succeeds.
* An unknown key is not an outage: ``public_key`` returns None and ``sign``
  raises :class:`~vouch.keyservice.base.KeyNotFoundError`.

Everything the signer returns is checked before use: a public key must hash
to the key ID it was returned under, and a signature must verify with the
key it claims (when this client has seen that key), so a faulty or hostile
signer cannot make the server publish metadata clients would reject.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Final, TypeVar

from google.protobuf.message import Message

from vouch.keyservice.base import (
    DEFAULT_ALGORITHM,
    KeyInfo,
    KeyNotFoundError,
    KeyServiceError,
    KeyServiceUnavailableError,
    ServiceSigner,
    UnsupportedAlgorithmError,
)
from vouch.signer import protocol
from vouch.signer._grpc import grpc
from vouch.signer.protocol import health_pb, pb
from vouch.tuf import keys as tufkeys
from vouch.tuf.errors import FormatError
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Signature

log = logging.getLogger("vouch.keyservice.remote")

#: Deadline of one RPC. notary-server sets none; a hung signer must not hang publishes.
DEFAULT_TIMEOUT: Final = 10.0
#: How long a call waits for a connection after a previous call failed.
CONNECT_TIMEOUT: Final = 2.0
#: A failed channel is replaced by a fresh one at most this often (seconds).
MIN_CHANNEL_AGE: Final = 0.5
HEALTH_TIMEOUT: Final = 5.0
CHANNEL_OPTIONS: Final = (
    # Reconnect quickly after a signer restart (grpc's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # No keepalive pings: notary-signer (Go) answers pings more often than every
    # 5 minutes with GOAWAY; a vanished host is caught by the RPC deadline instead.
)
_PUBLIC_CACHE_SIZE: Final = 4096
_UNAVAILABLE_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp")


class RemoteKeyService:
    """:class:`~vouch.keyservice.base.KeyService` over notary-signer's gRPC API.

    ``hostname`` and ``port`` are dialled; ``ca_file`` (PEM) is the only trust
    root for the signer's certificate (system roots when None, as in notary);
    ``cert_file``/``key_file`` are the client certificate a signer with
    ``client_ca_file`` requires. Files are read once, here, so a broken path
    fails at start-up rather than on the first publish.

    Two limits of the remote API, shared with notary-server: :meth:`get_key`
    cannot list a GUN's keys (it returns None), and :meth:`rotate_key` is
    CreateKey, which hands out an existing unused key if the signer has one.
    """

    def __init__(
        self,
        hostname: str,
        port: int | str,
        *,
        ca_file: str | PathLike[str] | None = None,
        cert_file: str | PathLike[str] | None = None,
        key_file: str | PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if not hostname:
            raise ValueError("the remote signer needs a hostname")
        port_number = int(port)
        if not 0 < port_number < 65536:
            raise ValueError(f"invalid signer port {port!r}")
        if (cert_file is None) != (key_file is None):
            raise ValueError("the client certificate and key must be given together")
        host = f"[{hostname}]" if ":" in hostname and not hostname.startswith("[") else hostname
        self.target = f"{host}:{port_number}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca_file),
            private_key=_read(key_file),
            certificate_chain=_read(cert_file),
        )
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel_born = 0.0
        self._failed = False  # the last call found the signer unreachable
        self._closing: set[asyncio.Task[None]] = set()
        self._public: OrderedDict[str, Key] = OrderedDict()

    # -- plumbing ------------------------------------------------------------------------

    def _get_channel(self) -> grpc.aio.Channel:
        """The channel of the running event loop (a grpc.aio channel is bound to one)."""
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            self._channel = self._new_channel()
            self._loop = loop
        return self._channel

    def _new_channel(self) -> grpc.aio.Channel:
        self._channel_born = time.monotonic()
        return grpc.aio.secure_channel(self.target, self._credentials, options=CHANNEL_OPTIONS)

    async def _call(
        self,
        method: str,
        request: _Req,
        response_type: Callable[[bytes], _Resp],
        *,
        timeout: float | None = None,
    ) -> _Resp:
        """One unary RPC; transport-level failures become KeyServiceUnavailableError."""
        channel = self._get_channel()
        if self._failed:
            channel = await self._reconnect(channel)
        stub = channel.unary_unary(
            method,
            request_serializer=_serialize,
            response_deserializer=response_type,
        )
        try:
            response: _Resp = await stub(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            # An UNAVAILABLE from a signer we are connected to (its database is down)
            # needs no reconnect; a broken connection does.
            ready = channel.get_state() == grpc.ChannelConnectivity.READY
            if not ready and not self._failed:
                log.warning("signer %s unreachable: %s", self.target, exc.details())
            self._failed = not ready
            if exc.code() in _UNAVAILABLE_CODES:
                raise KeyServiceUnavailableError(
                    f"signer {self.target} unavailable: {exc.code().name}: {exc.details()}"
                ) from None
            raise
        if self._failed:
            log.info("signer %s reachable again", self.target)
            self._failed = False
        return response

    async def _reconnect(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        """After a failure: get a connection attempt going now, and wait briefly for it.

        grpc would retry on its own, but only after its backoff, and its channel
        stays in TRANSIENT_FAILURE (failing calls at once) until a retry succeeds;
        a fresh channel dials immediately. That makes the first request after a
        signer restart succeed, while a signer that is still down costs one refused
        connection (at most ``connect_timeout``). Channels are replaced at most every
        ``MIN_CHANNEL_AGE`` seconds, so a burst of requests cannot become a storm of
        handshakes.
        """
        state = channel.get_state(try_to_connect=True)
        if state == grpc.ChannelConnectivity.READY:
            return channel
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            if time.monotonic() - self._channel_born < MIN_CHANNEL_AGE:
                return channel  # just replaced: let this call fail fast
            old, channel = channel, self._new_channel()
            self._channel = channel
            # Calls still running on the old channel get their deadline to finish.
            task = asyncio.create_task(old.close(grace=self.timeout))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        await self._wait_connected(channel, self.connect_timeout)
        return channel

    @staticmethod
    async def _wait_connected(channel: grpc.aio.Channel, timeout: float) -> None:
        """Wait until the channel is READY, its attempt failed, or ``timeout`` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state = channel.get_state(try_to_connect=True)
        while state in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
            except TimeoutError:
                return
            state = channel.get_state(try_to_connect=True)

    def _remember(self, key: Key) -> None:
        self._public[key.keyid] = key
        self._public.move_to_end(key.keyid)
        while len(self._public) > _PUBLIC_CACHE_SIZE:
            self._public.popitem(last=False)

    @staticmethod
    def _key_of(key_id: str, algorithm: str, public: bytes) -> Key:
        """The key a response describes, which must hash to the ID it came with."""
        key = Key(algorithm, tufkeys.b64encode(public))
        if key_id and key.keyid != key_id:
            raise KeyServiceError(f"signer returned a public key that is not key {key_id}")
        return key

    # -- KeyService ----------------------------------------------------------------------

    async def create_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key:
        request = pb.CreateKeyRequest(algorithm=algorithm, gun=gun, role=role)
        try:
            response = await self._call(protocol.CREATE_KEY, request, pb.PublicKey.FromString)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if "not supported" in details:
                raise UnsupportedAlgorithmError(details) from None
            raise _rpc_error("CreateKey", exc) from None
        key = self._key_of(
            response.keyInfo.keyID.ID, response.keyInfo.algorithm.algorithm, response.publicKey
        )
        self._remember(key)
        return key

    async def rotate_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key:
        """CreateKey: the remote API has no "always new" call (notary-server's rotation
        endpoint makes the same request)."""
        return await self.create_key(gun, role, algorithm)

    async def get_key(self, gun: str, role: str) -> Key | None:
        """Always None: the signer API looks keys up by ID only."""
        return None

    async def key_info(self, key_id: str) -> KeyInfo | None:
        """GetKeyInfo; the signer tells the role but not the GUN or the dates."""
        try:
            response = await self._call(
                protocol.GET_KEY_INFO, pb.KeyID(ID=key_id), pb.GetKeyInfoResponse.FromString
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise KeyServiceError(
                f"GetKeyInfo failed: {exc.code().name}: {exc.details()}"
            ) from None
        key = self._key_of(key_id, response.keyInfo.algorithm.algorithm, response.publicKey)
        self._remember(key)
        return KeyInfo(key, "", response.role, None, None)

    async def public_key(self, key_id: str) -> Key | None:
        info = await self.key_info(key_id)
        return info.key if info is not None else None

    async def sign(self, key_id: str, message: bytes) -> Signature:
        request = pb.SignatureRequest(keyID=pb.KeyID(ID=key_id), content=message)
        try:
            response = await self._call(protocol.SIGN, request, pb.Signature.FromString)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise KeyNotFoundError(
                    exc.details() or f"signing key not found: {key_id}"
                ) from None
            raise _rpc_error("Sign", exc) from None
        keytype = response.keyInfo.algorithm.algorithm
        method = response.algorithm.algorithm or protocol.KEY_TYPE_METHODS.get(keytype, "")
        if method not in protocol.METHOD_KEY_TYPES:
            raise KeyServiceError(f"signer used an unknown signature method {method!r}")
        known = self._public.get(key_id)
        if known is not None:
            try:
                valid = tufkeys.verify(known, method, response.content, message)
            except FormatError:
                valid = False
            if not valid:
                raise KeyServiceError(f"signer returned a signature that does not verify: {key_id}")
        return Signature(key_id, method, tufkeys.b64encode(response.content))

    def signer(self, key_id: str) -> ServiceSigner:
        return ServiceSigner(self, key_id)

    async def delete_key(self, key_id: str) -> None:
        try:
            await self._call(protocol.DELETE_KEY, pb.KeyID(ID=key_id), pb.Void.FromString)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error("DeleteKey", exc) from None
        self._public.pop(key_id, None)

    async def check_health(self) -> None:
        """Both services SERVING, asked as notary-server asks (its "overall" check)."""
        for name in (protocol.HEALTH_KEY_MANAGEMENT, protocol.HEALTH_SIGNER):
            try:
                response = await self._call(
                    protocol.HEALTH_CHECK,
                    health_pb.HealthCheckRequest(service=name),
                    health_pb.HealthCheckResponse.FromString,
                    timeout=HEALTH_TIMEOUT,
                )
            except grpc.aio.AioRpcError as exc:
                raise KeyServiceUnavailableError(
                    f"signer {self.target} health check for {name}: "
                    f"{exc.code().name}: {exc.details()}"
                ) from None
            if response.status != protocol.SERVING:
                status = health_pb.HealthCheckResponse.ServingStatus.Name(response.status)
                raise KeyServiceUnavailableError(f"signer {self.target}: {name} is {status}")

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
        if self._closing:  # replaced channels still draining: a bounded wait, then go
            await asyncio.wait(self._closing, timeout=1.0)


def _rpc_error(what: str, exc: grpc.aio.AioRpcError) -> KeyServiceError:
    """A signer-side failure that is not an outage (INTERNAL, INVALID_ARGUMENT, ...)."""
    return KeyServiceError(f"{what} failed: {exc.code().name}: {exc.details()}")


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _read(path: str | PathLike[str] | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


__all__ = ["RemoteKeyService"]
