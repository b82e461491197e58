"""``vouch server``: a drop-in replacement for notary-server.

:mod:`~vouch.server.service` holds the operations (no HTTP),
:mod:`~vouch.server.app` maps notary-server's HTTP API onto them.
"""
