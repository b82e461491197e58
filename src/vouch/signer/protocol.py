"""The names on the wire of notary-signer's gRPC API, shared by server and client.

The method paths are fixed by notary's ``proto`` package and by the standard
health checking protocol; notary-server dials exactly these, so they are
spelled out here once rather than derived from generated service stubs
(which are untyped and would add nothing else).
"""

from __future__ import annotations

from typing import Final

from vouch.signer._proto import health_pb2, signer_pb2
from vouch.tuf import keys as tufkeys

KEY_MANAGEMENT_SERVICE: Final = "proto.KeyManagement"
SIGNER_SERVICE: Final = "proto.Signer"
HEALTH_SERVICE: Final = "grpc.health.v1.Health"

CREATE_KEY: Final = f"/{KEY_MANAGEMENT_SERVICE}/CreateKey"
DELETE_KEY: Final = f"/{KEY_MANAGEMENT_SERVICE}/DeleteKey"
GET_KEY_INFO: Final = f"/{KEY_MANAGEMENT_SERVICE}/GetKeyInfo"
SIGN: Final = f"/{SIGNER_SERVICE}/Sign"
HEALTH_CHECK: Final = f"/{HEALTH_SERVICE}/Check"
HEALTH_WATCH: Final = f"/{HEALTH_SERVICE}/Watch"

#: The service names notary-server's health probe asks about (notary's constants),
#: plus "" (the whole server), which every standard health server answers.
HEALTH_KEY_MANAGEMENT: Final = "grpc.health.v1.Health.KeyManagement"
HEALTH_SIGNER: Final = "grpc.health.v1.Health.Signer"
HEALTH_NAMES: Final = ("", HEALTH_KEY_MANAGEMENT, HEALTH_SIGNER)

#: Signature method (``Signature.algorithm``) → key type (``KeyInfo.algorithm``).
METHOD_KEY_TYPES: Final = {
    tufkeys.METHOD_ECDSA: tufkeys.ECDSA,
    tufkeys.METHOD_EDDSA: tufkeys.ED25519,
    tufkeys.METHOD_RSAPSS: tufkeys.RSA,
}
#: Key type → signature method, the inverse (what notary's RemotePrivateKey derives).
KEY_TYPE_METHODS: Final = {keytype: method for method, keytype in METHOD_KEY_TYPES.items()}

ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING

pb = signer_pb2
health_pb = health_pb2

__all__ = [
    "CREATE_KEY",
    "DELETE_KEY",
    "GET_KEY_INFO",
    "HEALTH_CHECK",
    "HEALTH_KEY_MANAGEMENT",
    "HEALTH_NAMES",
    "HEALTH_SERVICE",
    "HEALTH_SIGNER",
    "HEALTH_WATCH",
    "KEY_MANAGEMENT_SERVICE",
    "KEY_TYPE_METHODS",
    "METHOD_KEY_TYPES",
    "NOT_SERVING",
    "SERVING",
    "SIGN",
    "SIGNER_SERVICE",
    "ServingStatus",
    "health_pb",
    "pb",
]
