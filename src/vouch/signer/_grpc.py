"""``grpc``, imported with gRPC's fork support switched off.

With fork support on (grpcio's default since 1.80), a process that uses gRPC
and then starts a program through ``fork`` (``subprocess`` with
``preexec_fn``, for instance) can see the child abort before ``exec``: gRPC's
fork handler restarts its poller thread in the child, whose epoll descriptor
``close_fds`` has just closed (grpc/grpc#43055; reproduced here at about one
spawn in five under load). vouch never uses a gRPC channel across a fork, so
it turns the handlers off, before gRPC reads the setting on first import.
Import grpc through this module, never directly, so that the switch happens
first whatever the import order; an explicit ``GRPC_ENABLE_FORK_SUPPORT`` in
the environment is respected.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import grpc.aio

__all__ = ["grpc"]
