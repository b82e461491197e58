"""vouch: content trust for container images, wire-compatible with Notary v1.

The package is layered so that trust decisions never depend on I/O:

* :mod:`vouch.tuf` — the Notary TUF dialect: canonical JSON, keys, metadata,
  and the client update rules. Pure: bytes in, objects and verdicts out.
* :mod:`vouch.crypto` — private keys, signing and the notary CLI's key files.
* :mod:`vouch.cli` — the ``vouch`` command.
"""

__version__ = "0.1.0"
