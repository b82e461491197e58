"""Which policy applies to an image: Portieris' selection, without its bypasses.

* Namespace policies, if the namespace has any, are used exclusively;
  otherwise cluster policies; no match means deny.
* An exact pattern (no ``*``) wins; otherwise the most specific wildcard
  pattern: the longest, not counting ``*`` (Portieris' quality).
* ``*`` matches one or more characters. A pattern with a ``/`` is split at
  its first ``/``: the host part must match the image's *whole* host
  (``host:port``) and the rest the path, so a host named inside the path, a
  longer host name or another port cannot satisfy it. A pattern without a
  ``/`` that starts with a literal (``host*``) is anchored the same way: the
  literal must be the whole host. A pattern that fails
  is retried with ``:*`` appended (``repo/app`` matches ``repo/app:v1``).
* Images are matched in normalised form (``nginx`` is
  ``docker.io/library/nginx:latest``), and so are patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from vouch.admission.policy import PolicyDocument, RepositoryRule
from vouch.admission.reference import ImageReference, normalise_pattern


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".+".join(re.escape(piece) for piece in pattern.split("*")), re.DOTALL)


def glob(pattern: str, text: str) -> bool:
    """``*`` = one or more characters; everything else literal; anchored."""
    return _compiled(pattern).fullmatch(text) is not None


def pattern_matches(pattern: str, image: str) -> bool:
    """Host-anchored match of a policy pattern against a normalised image string."""
    if "/" not in pattern:
        literal, star, rest = pattern.partition("*")
        if not star or not literal:
            return glob(pattern, image)  # exact, or a wildcard host ("*", "*:v1")
        # ``HOST*``: the literal part must be the image's whole host, so
        # ``registry.example.com*`` is not satisfied by ``registry.example.com.evil``
        # nor ``registry.example.com:5000*`` by port 50001.
        i_host, _, i_path = image.partition("/")
        return i_host == literal and glob(star + rest, "/" + i_path)
    p_host, _, p_path = pattern.partition("/")
    i_host, _, i_path = image.partition("/")
    return glob(p_host, i_host) and glob(p_path, i_path)


def _matches(pattern: str, image: str) -> bool:
    return pattern_matches(pattern, image) or pattern_matches(pattern + ":*", image)


def quality(pattern: str) -> int:
    return len(pattern) - pattern.count("*")


@dataclass(frozen=True, slots=True)
class Match:
    rule: RepositoryRule
    document: PolicyDocument
    pattern: str


def select_documents(
    documents: list[PolicyDocument], namespace: str | None
) -> tuple[list[PolicyDocument], str]:
    """The documents that apply in ``namespace`` and a label for messages."""
    local = [
        d for d in documents if d.namespaced and namespace is not None and d.namespace == namespace
    ]
    if local:
        return local, f"ImagePolicies in namespace {namespace}"
    return [d for d in documents if not d.namespaced], "ClusterImagePolicies"


def best_match(
    documents: list[PolicyDocument], namespace: str | None, image: ImageReference
) -> tuple[Match | None, str]:
    """The most specific matching rule, or None with the reason there is none."""
    chosen, scope = select_documents(documents, namespace)
    if not chosen:
        return (
            None,
            "no image policies apply (no ImagePolicy in the namespace, no ClusterImagePolicy)",
        )
    text = image.match_string()
    best: Match | None = None
    best_quality = -1
    for doc in chosen:
        for rule in doc.repositories:
            pattern = normalise_pattern(rule.name)
            if "*" not in pattern and pattern in (text, image.name):
                return Match(rule, doc, pattern), ""
            if _matches(pattern, text) and quality(pattern) > best_quality:
                best, best_quality = Match(rule, doc, pattern), quality(pattern)
    if best is None:
        return None, f"no matching repositories in the {scope}"
    return best, ""
