"""Private keys, signing, root certificates and the notary CLI's key files.

Everything here holds secrets; the pure trust rules live in :mod:`vouch.tuf`
and only ever see public keys and the :class:`~vouch.tuf.metadata.Signer`
protocol.
"""
