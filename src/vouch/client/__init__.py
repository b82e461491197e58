"""The trust client: a drop-in for the notary CLI's library layer.

It shares the notary CLI's trust directory byte for byte (metadata cache,
private keys, staged changelist, client config), so vouch and notary can be
used on the same ``~/.notary`` or ``~/.docker/trust`` interchangeably.
"""
