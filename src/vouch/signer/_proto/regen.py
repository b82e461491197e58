"""Regenerate the checked-in protobuf modules: ``python -m vouch.signer._proto.regen``.

The modules are checked in so that installing vouch never needs grpcio-tools
(a dev dependency). Generated code is not written to vouch's style, so each
file gets a header that exempts it from ruff's lint rules and relaxes mypy
(the generated stubs leave ``Mapping`` unparameterised), and is then run
through ``ruff format`` so ``ruff format --check`` stays green without a
pyproject exclusion. The gRPC service stubs (``*_pb2_grpc.py``) are not
generated at all: they are untyped, and :mod:`vouch.signer.api` binds the
method paths itself.

Protobuf checks at import that the runtime is at least the version of the
protoc that generated the code, so after regenerating, the ``protobuf`` lower
bound in pyproject.toml must be raised to the version printed in the headers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2]  # .../src
PROTOS = ("signer.proto", "health.proto")

PY_HEADER = "# ruff: noqa\n# mypy: ignore-errors\n# Generated from {proto} by regen.py.\n"
PYI_HEADER = '# ruff: noqa\n# mypy: disable-error-code="type-arg"\n# Generated from {proto}.\n'


def main() -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # noqa: PLC0415

    files = [str(HERE / name) for name in PROTOS]
    args = ["protoc", f"-I{SRC}", f"--python_out={SRC}", f"--pyi_out={SRC}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    outputs: list[str] = []
    for name in PROTOS:
        stem = name.removesuffix(".proto")
        for suffix, header in (("_pb2.py", PY_HEADER), ("_pb2.pyi", PYI_HEADER)):
            path = HERE / f"{stem}{suffix}"
            path.write_text(header.format(proto=name) + path.read_text())
            outputs.append(str(path))
    ruff = Path(sys.executable).with_name("ruff")
    subprocess.run([str(ruff), "format", "--quiet", *outputs], check=True)  # noqa: S603


if __name__ == "__main__":
    main()
