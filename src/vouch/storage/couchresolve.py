"""Resolving forks that CouchDB replication brings in (see couchfork for the rule).

A fork shows up as conflicting revisions: two regions created the same batch
id, and CouchDB keeps both (plus whatever each built on top). Until resolved,
reads stay consistent anyway (every current-map entry names the revision that
holds its file, so a state is always one region's history), but views and
later publishes need one history. The resolver:

1. finds the GUN's conflicts with the ``conflicts`` view (``_conflicts`` is
   visible to map functions on CouchDB and PouchDB);
2. reads every live revision from the lowest conflicted batch up, and lets
   :func:`couchfork.decide` pick the winning path;
3. **creates a resolution batch** on top of everything (``seq`` = highest + 1):
   the winner's current map, a fresh change record for the winner's timestamp
   (feed consumers in either region learn the GUN's state changed), and a
   notice per region whose publishes were discarded. Being a create, it also
   makes any publisher still working on a discarded head fail with 409 and
   retry on the winner;
4. **discards** the losers: a losing revision of a document that has a
   winning one is deleted; a document with no winning revision becomes a
   ``lost`` stub (the id stays taken, so no stale publisher can re-create it),
   and the losers' change records are voided.

Only the arbiter region (the first of ``regions``) resolves: regions deciding
from different partial views could each discard the other's history. Other
regions refuse publishes of a GUN with a visible fork until the decision has
replicated to them. Several arbiter instances may still resolve at once; their
resolution batches conflict in turn and the next round keeps one (same rule,
the longer path of the winning branch, then the lowest uid). Each step is
idempotent, so a crash in the middle is finished by the next scan or publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from vouch.storage import couchdb as cdb
from vouch.storage.couchfork import Node, decide, describe
from vouch.storage.couchhttp import CouchConflictError, CouchNotFoundError, jparams
from vouch.storage.memory import utcnow
from vouch.tuf.publish import UpdateError

if TYPE_CHECKING:
    from vouch.storage.couchdb import CouchStore

log = logging.getLogger("vouch.storage.couchdb")

#: Resolution rounds per call (each round settles one layer of concurrent resolutions).
_ROUNDS = 8
_LIVE = ("batch", "tombstone")
_BASE_PAGE = 20


class ForkResolver:
    """Finds and resolves the forks of one :class:`CouchStore`'s database."""

    def __init__(self, store: CouchStore) -> None:
        self._s = store
        self._task: asyncio.Task[None] | None = None
        regions = store.target.regions
        #: Only the first region of ``regions`` (the arbiter) resolves forks. Two
        #: regions deciding from different partial views (replication under way)
        #: could each discard the other's history and leave nothing valid; one
        #: decider never contradicts itself. Other regions serve a consistent head
        #: meanwhile and get the decision (and notices) by replication.
        self.arbiter = not regions or store.target.region == regions[0]

    # -- background scan (multi-region) -------------------------------------------------

    def start(self, every: float) -> None:
        """Scan for forks every ``every`` seconds, so they resolve without a publish."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(every))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.scan()
            except Exception:  # a scan must never end the loop; the next one retries
                log.exception("fork scan failed")

    async def scan(self) -> int:
        """Resolve every GUN with conflicting revisions; returns how many were seen."""
        if not self.arbiter:
            return 0
        db = self._s._db
        body = await db.get_json(
            f"{db.db_path}/_design/vouch/_view/conflicts",
            "scan for forks",
            params={"limit": "1000"},
        )
        guns = {(str(r["value"]), str(r["key"][0])) for r in body.get("rows") or []}
        for gun, gh in sorted(guns):
            async with self._s._locks.hold(gun):
                await self.settle(gun, gh)
        return len(guns)

    # -- one GUN ------------------------------------------------------------------------

    async def settle(self, gun: str, gh: str) -> None:
        """Resolve the GUN's forks, if any (the caller holds the GUN's lock).

        Outside the arbiter region, refuse a publish while the GUN has an
        unresolved fork here: it would build on a history the arbiter may
        discard. The refusal names the conflict; the publisher retries once the
        arbiter's decision has replicated (usually seconds).
        """
        if not self.arbiter:
            if await self._conflicts(gh):
                raise UpdateError(
                    "ErrValidation",
                    f"conflict: {gun} was published in two regions before they converged; "
                    f"region {self._s.target.regions[0]} decides which history is kept and "
                    "its decision has not reached this region yet. Nothing was published: "
                    "retry in a few seconds.",
                )
            return
        for _ in range(_ROUNDS):
            rows = await self._conflicts(gh)
            if not rows:
                return
            for key in rows:
                if key[1] == "c":
                    await self._collapse(cdb._cid(int(key[2])))
            seqs = [int(k[2]) for k in rows if k[1] == "b"]
            if seqs and not await self._resolve(gun, gh, min(seqs)):
                return
        log.warning("forks of %r were still changing after %d rounds", gun, _ROUNDS)

    async def _conflicts(self, gh: str) -> list[list[Any]]:
        db = self._s._db
        body = await db.get_json(
            f"{db.db_path}/_design/vouch/_view/conflicts",
            "look up forks",
            params=jparams(startkey=[gh], endkey=[gh, {}]),
        )
        return [list(r["key"]) for r in body.get("rows") or []]

    async def _resolve(self, gun: str, gh: str, low: int) -> bool:
        """One round for the fork at batch ``low``; False if no history is valid."""
        db = self._s._db
        base = await self._below(gh, low)
        body = await db.get_json(
            f"{db.db_path}/_all_docs",
            "read forked history",
            params=jparams(
                startkey=cdb._bid(gh, low),
                endkey=cdb._bid(gh, cdb._NUM_MAX),
                include_docs=True,
                conflicts=True,
            ),
        )
        leaves: dict[int, list[dict[str, Any]]] = {}
        for row in body.get("rows") or []:
            doc = row.get("doc")
            if not doc:
                continue
            found = await self._leaves(doc["_id"]) if doc.get("_conflicts") else [doc]
            leaves[int(doc["seq"])] = found
        if not leaves:
            return True
        top = max(leaves)
        for docs in leaves.values():  # stubs in conflict with stubs: keep one
            if len(docs) > 1 and all(d.get("kind") not in _LIVE for d in docs):
                for d in sorted(docs, key=lambda d: str(d["_rev"]))[1:]:
                    await self._delete_rev(d)
        nodes = [
            Node.from_doc(d) for docs in leaves.values() for d in docs if d.get("kind") in _LIVE
        ]
        if not nodes:  # only stubs were in conflict (collapsed above)
            return True
        decision = decide(nodes, base.get("uid") if base else None)
        if decision is None:
            log.warning(
                "the forked history of %r has no valid path from batch %d yet (replication "
                "under way?); if it persists, an operator must resolve it",
                gun,
                low - 1,
            )
            return False
        tip, losers = decision.winner[-1], decision.losers
        if not losers:
            return True
        if not (tip.doc.get("resolves") and tip.seq == top):
            try:
                await self._write_resolution(gun, gh, tip, losers, top + 1)
            except CouchConflictError:
                return True  # someone took that seq: the next round sees it
        await self._discard(gun, gh, losers, leaves, top + 1)
        log.warning(
            "resolved a fork of %r: kept the history ending at batch %d (%s), discarded %s",
            gun,
            tip.seq,
            tip.region or "-",
            describe(losers),
        )
        return True

    async def _write_resolution(
        self, gun: str, gh: str, tip: Node, losers: list[Node], seq: int
    ) -> None:
        s = self._s
        now = utcnow()
        current = cdb._parse_current(tip.doc.get("current") or {}, tip.seq, tip.rev)
        notices = list(tip.doc.get("notices") or [])
        lost = [n for n in losers if n.publishes]
        for region in sorted({n.region for n in lost}):
            mine = [n for n in lost if n.region == region]
            notices.append({"seq": seq, "region": region, "detail": _detail(gun, mine, tip)})
        ts = current.get("timestamp")
        change_id = None
        if ts is not None:
            change_id = await s._allocate(
                gun=gun,
                gh=gh,
                seq=seq,
                version=ts.version,
                sha256=ts.sha256,
                category="update",
                at=now,
            )
        doc = {
            "kind": "batch",
            "gun": gun,
            "gh": gh,
            "seq": seq,
            "gen": int(tip.doc.get("gen", 0)) if tip.kind == "batch" else tip.seq,
            "at": now.isoformat(),
            "files": {},
            "current": {role: e.json() for role, e in current.items()},
            "change_id": change_id,
            "resolves": sorted(n.uid for n in losers),
            "notices": notices,
            "uid": secrets.token_hex(16),
            "parent": tip.uid,
            "region": s.region,
        }
        try:
            await s._create(cdb._bid(gh, seq), doc, "resolve fork")
        except CouchConflictError:
            if change_id is not None:
                await s._void(change_id)
            raise

    async def _discard(
        self,
        gun: str,
        gh: str,
        losers: list[Node],
        leaves: dict[int, list[dict[str, Any]]],
        resolution: int,
    ) -> None:
        by_seq: dict[int, list[Node]] = {}
        for n in losers:
            by_seq.setdefault(n.seq, []).append(n)
        for seq, at_seq in by_seq.items():
            doc_id = cdb._bid(gh, seq)
            drop = sorted(at_seq, key=lambda n: n.rev)
            if len(drop) >= len(leaves[seq]):  # nothing wins at this seq: keep the id, a stub
                keep, drop = drop[0], drop[1:]
                stub = {
                    "_id": doc_id,
                    "_rev": keep.rev,
                    "kind": "lost",
                    "gun": gun,
                    "gh": gh,
                    "seq": seq,
                    "uid": keep.uid,
                    "lost_to": resolution,
                }
                with contextlib.suppress(CouchConflictError):  # another resolver did it
                    await self._s._db.request(
                        "PUT", self._s._db.doc_path(doc_id), "discard batch", body=stub
                    )
            for n in drop:
                await self._delete_rev(n.doc)
        for n in losers:
            change_id = n.doc.get("change_id")
            if isinstance(change_id, int):
                await self._s._void(change_id)

    # -- plumbing -----------------------------------------------------------------------

    async def _below(self, gh: str, low: int) -> dict[str, Any] | None:
        """The newest batch below ``low`` that is not discarded: the common base.

        Stubs of discarded batches (``lost``) sit between a resolution's parent and
        the resolution itself, so they are skipped; a deletion's ``dead`` stubs keep
        the ``uid`` of the batch they replaced and count.
        """
        db = self._s._db
        start = low - 1
        while start >= 1:
            body = await db.get_json(
                f"{db.db_path}/_all_docs",
                "read fork base",
                params=jparams(
                    startkey=cdb._bid(gh, start),
                    endkey=cdb._bid(gh, 0),
                    descending=True,
                    limit=_BASE_PAGE,
                    include_docs=True,
                ),
            )
            rows = [r["doc"] for r in body.get("rows") or [] if r.get("doc")]
            for doc in rows:
                if doc.get("kind") != "lost":  # a live batch, or a deletion's stub of one
                    found: dict[str, Any] = doc
                    return found
            if len(rows) < _BASE_PAGE:
                return None
            start = int(rows[-1]["seq"]) - 1
        return None

    async def _leaves(self, doc_id: str) -> list[dict[str, Any]]:
        """Every live (not deleted) leaf revision of a document."""
        db = self._s._db
        body = await db.get_json(
            db.doc_path(doc_id), "read conflicting revisions", params={"open_revs": "all"}
        )
        out = []
        for item in body if isinstance(body, list) else []:
            doc = item.get("ok") if isinstance(item, dict) else None
            if isinstance(doc, dict) and not doc.get("_deleted"):
                out.append(doc)
        return out

    async def _collapse(self, doc_id: str) -> None:
        """A change record with several revisions: keep a voided one if any, else the lowest."""
        docs = await self._leaves(doc_id)
        if len(docs) < 2:
            return
        docs.sort(key=lambda d: (not d.get("voided"), str(d["_rev"])))
        log.warning("change record %s had conflicting revisions: check region=/regions=", doc_id)
        for d in docs[1:]:
            await self._delete_rev(d)

    async def _delete_rev(self, doc: dict[str, Any]) -> None:
        db = self._s._db
        with contextlib.suppress(CouchNotFoundError, CouchConflictError):  # gone already
            await db.request(
                "DELETE", db.doc_path(doc["_id"]), "discard revision", params={"rev": doc["_rev"]}
            )


def _detail(gun: str, lost: list[Node], winner: Node) -> str:
    where = f"region {winner.region}" if winner.region else "another replica"
    return (
        f"conflict: {gun} was published in two regions before they converged; "
        f"{where}'s history (timestamp v{winner.ts_version}) won and these publishes were "
        f"discarded: {describe(lost)}. Nothing of them is served. Your client will fetch the "
        "winning trust data: stage those changes again and publish."
    )
