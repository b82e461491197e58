"""Admission control: which images may run, decided from signed trust data.

:mod:`reference` normalises image references, :mod:`policy` reads Portieris'
and vouch's policy documents, :mod:`match` selects the policy for an image
(Portieris semantics, host-anchored), :mod:`engine` decides with full TUF
verification through the client. The Kubernetes webhook and ``vouch policy
check`` are thin edges over the same engine.
"""
