"""Choosing between forked histories of one GUN (CouchDB multi-region replication).

Two regions that each accept a publish of the same GUN before replication
brings them together both create batch ``seq`` of that GUN; CouchDB keeps both
as conflicting revisions (and whatever each region built on top). Every batch
names the batch it was built on (``parent``, by its ``uid``), so the batches
from the fork point up form a tree; each root-to-tip path is one history a
region accepted, validated by that region's vouch against the same common
state. This module picks one of them, the same one in every region, from the
batch documents alone:

1. the path must be **valid**: linked down to the common base batch, and
   every batch holding the attachments its ``files`` name (a path through a
   discarded or truncated batch is not a history anyone can verify);
2. a path containing a **deletion** wins: the deleting region has already
   replaced the shared history with stubs, which replicate everywhere;
3. then the higher **timestamp version** at the tip: a TUF client refuses to
   go back to a lower timestamp version (rollback protection), so the highest
   version is the only state every client that saw any branch can move to;
4. then more **publishes** (batches with files; fences and resolutions hold none);
5. then the history **accepted first** (earliest ``at`` of its first batch);
   of two paths of one branch the longer (a resolution on top of a tip);
6. then the lowest ``uid``, then the lowest revision: a total order, so every
   region computes the same winner from the same documents.

The caller (``CouchStore``) writes the decision: a resolution batch on top of
the winner, then the losing revisions deleted or replaced by stubs, and a
notice for the region whose publishes were discarded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Node:
    """One live revision of one batch document."""

    seq: int
    rev: str
    uid: str
    parent: str | None
    kind: str  # "batch" or "tombstone"
    at: str  # ISO 8601 UTC, comparable as text
    ts_version: int  # current timestamp version after this batch (0 if none)
    publishes: bool  # holds files (a publish), not a fence or resolution
    complete: bool  # every file it names is attached
    region: str
    doc: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Node:
        current = doc.get("current") or {}
        ts = current.get("timestamp") or {}
        files = doc.get("files") or {}
        atts = doc.get("_attachments") or {}
        return cls(
            seq=int(doc["seq"]),
            rev=str(doc.get("_rev", "")),
            uid=str(doc.get("uid") or doc.get("_rev", "")),
            parent=doc.get("parent"),
            kind=str(doc.get("kind", "")),
            at=str(doc.get("at", "")),
            ts_version=int(ts.get("v", 0)),
            publishes=bool(files),
            complete=all(f.get("att") in atts for f in files.values()),
            region=str(doc.get("region") or ""),
            doc=doc,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The winning path (base side first) and every live revision not on it."""

    winner: list[Node]
    losers: list[Node]


def decide(nodes: list[Node], base_uid: str | None) -> Decision | None:
    """Pick the winning history among ``nodes`` (batches above the common base).

    ``base_uid`` is the ``uid`` of the newest batch below the fork (``None``
    when the fork is at the GUN's first batch). Returns ``None`` if no node
    forms a valid path from the base (nothing can be chosen; the caller leaves
    the documents alone and reports it).
    """
    by_uid: dict[str, list[Node]] = {}
    for n in nodes:
        by_uid.setdefault(n.uid, []).append(n)
    paths: list[list[Node]] = []
    for tip in nodes:
        path = _path(tip, by_uid, base_uid)
        if path is not None:
            paths.append(path)
    if not paths:
        return None
    best = min(paths, key=_rank)
    on_path = {(n.seq, n.rev) for n in best}
    losers = [n for n in nodes if (n.seq, n.rev) not in on_path]
    return Decision(best, losers)


def _path(tip: Node, by_uid: dict[str, list[Node]], base_uid: str | None) -> list[Node] | None:
    """The valid path from the base up to ``tip``, or ``None``."""
    out = [tip]
    node = tip
    while True:
        if not node.complete or node.kind not in ("batch", "tombstone"):
            return None
        if node.parent == base_uid:
            return out[::-1]
        parents = [p for p in by_uid.get(node.parent or "", []) if p.seq < node.seq]
        if not parents:
            return None
        node = min(parents, key=lambda p: p.rev)  # one uid is one batch; copies rank by rev
        out.append(node)


def _rank(path: list[Node]) -> tuple[Any, ...]:
    """Sort key, best first (see the module docstring)."""
    tip = path[-1]
    return (
        not any(n.kind == "tombstone" for n in path),
        -tip.ts_version,
        -sum(n.publishes for n in path),
        path[0].at,
        -len(path),
        tip.uid,
        tip.rev,
    )


def describe(losers: list[Node]) -> str:
    """What a discarded branch held, for the notice its publisher gets."""
    pubs = [n for n in losers if n.publishes]
    if not pubs:
        return "no publishes"
    parts = []
    for n in sorted(pubs, key=lambda n: n.seq):
        roles = ", ".join(
            f"{role} v{f.get('v')}" for role, f in sorted((n.doc.get("files") or {}).items())
        )
        where = f" in region {n.region}" if n.region else ""
        parts.append(f"[{roles}] accepted{where} at {n.at}")
    return "; ".join(parts)
