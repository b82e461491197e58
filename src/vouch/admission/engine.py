"""The decision engine: an image, a namespace, the policies → allow or deny.

Shared by the admission webhook and ``vouch policy check``. Trust data is
fetched and verified by vouch's client (full TUF rules, pinned roots where
the policy pins them) and cached per (trust server, GUN, pinning, the
server's CA) for a
bounded time, never past the trust data's own expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from vouch.admission.kube import docker_credentials
from vouch.admission.match import best_match
from vouch.admission.policy import (
    PolicyError,
    PolicySet,
    RulePolicy,
    Signer,
    TrustPolicy,
    resolve_signers,
)
from vouch.admission.reference import ImageReference, InvalidReferenceError, parse
from vouch.client.auth import Credentials, TokenAuth
from vouch.client.remote import MAX_TIMESTAMP_SIZE, Remote, TLSConfig
from vouch.client.repository import Repository
from vouch.tuf import timefmt
from vouch.tuf.errors import TrustError
from vouch.tuf.pinning import TrustPinning
from vouch.tuf.trusted import TargetInfo, TrustedSet

# Where Docker Hub keeps its trust data; other registries must name theirs.
KNOWN_TRUST_SERVERS = {"docker.io": "https://notary.docker.io", "quay.io": "https://quay.io:443"}


@dataclass
class ImageDecision:
    image: str
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    digest: str | None = None
    pinned: str | None = None  # name:tag@sha256:..., when the policy mutates
    policy: str | None = None
    mode: str = "enforce"
    warnings: list[str] = field(default_factory=list)
    # why a denial: invalid-image, no-policy, not-trusted, trust-unavailable
    # (the webhook's metrics count decisions by it)
    category: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "image": self.image,
            "allowed": self.allowed,
            "reasons": self.reasons,
            "digest": self.digest,
            "pinned": self.pinned,
            "policy": self.policy,
            "mode": self.mode,
            "warnings": self.warnings,
        }


class DenyError(Exception):
    """A reason to deny (collected into the decision)."""


RemoteFactory = Callable[[str, TrustPolicy, TokenAuth | None], Remote]


def default_remote(server: str, trust: TrustPolicy, auth: TokenAuth | None = None) -> Remote:
    tls: TLSConfig | ssl.SSLContext | None = None
    if trust.server_ca is not None:
        ctx = ssl.create_default_context(cadata=trust.server_ca.decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        tls = ctx
    return Remote(server, tls=tls, auth=auth)


class Engine:
    def __init__(
        self,
        policies: PolicySet,
        *,
        cache_dir: Path | None = None,
        remote_factory: RemoteFactory = default_remote,
        cache_ttl: float = 30.0,
        default_trust_server: str | None = None,
    ) -> None:
        self.policies = policies
        self.cache_dir = cache_dir or Path(tempfile.mkdtemp(prefix="vouch-admission-"))
        self.remote_factory = remote_factory
        self.cache_ttl = cache_ttl
        self.default_trust_server = default_trust_server
        self._remotes: dict[tuple[str, bytes | None, str], Remote] = {}
        self._trust: dict[tuple[str, str, str, str], tuple[float, TrustedSet]] = {}
        self._inflight: dict[tuple[str, str, str, str], asyncio.Task[TrustedSet]] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.trust_errors = 0  # fetches that failed for another reason than a TUF check

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        for remote in self._remotes.values():
            await remote.aclose()

    # -- public --------------------------------------------------------------

    async def check(
        self,
        image: str,
        namespace: str | None = None,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> ImageDecision:
        """Decide for one image. ``credentials`` (registry host → login, from the
        pod's pull secrets) are offered to the trust server's token service."""
        decision = ImageDecision(image, allowed=False)
        try:
            ref = parse(image)
        except InvalidReferenceError as exc:
            decision.reasons.append(f"Deny {image!r}: {exc}")
            decision.category = "invalid-image"
            return decision
        # One policy set for the whole decision: the watcher may swap in a new
        # one (a watch event) while this decision awaits the trust server.
        policies = self.policies
        match, why = best_match(policies.documents, namespace, ref)
        if match is None:
            decision.reasons.append(f"Deny {image!r}: {why}")
            decision.category = "no-policy"
            return decision
        decision.policy = f"{match.document.label} ({match.rule.name})"
        policy = match.rule.policy
        if policy is None:
            decision.allowed = True
            decision.reasons.append(f"allowed by {decision.policy} without checks")
            return decision
        decision.mode = policy.mode
        try:
            await self._enforce(
                ref,
                policy,
                policies=policies,
                namespace=namespace,
                decision=decision,
                credentials=credentials or {},
            )
        except (DenyError, PolicyError, TrustError) as exc:
            decision.reasons.append(f"Deny {image!r}: {exc}")
            decision.category = "not-trusted"
        except Exception as exc:
            self.trust_errors += 1
            decision.reasons.append(f"Deny {image!r}: trust data unavailable: {exc}")
            decision.category = "trust-unavailable"
        if not decision.allowed and policy.mode == "audit":
            decision.warnings = decision.reasons
            decision.reasons = [f"audit mode: {decision.policy} would deny {image!r}"]
            decision.allowed = True
            decision.pinned = None
        return decision

    # -- enforcement ---------------------------------------------------------

    async def _enforce(
        self,
        ref: ImageReference,
        policy: RulePolicy,
        *,
        policies: PolicySet,
        namespace: str | None,
        decision: ImageDecision,
        credentials: Mapping[str, Credentials],
    ) -> None:
        if policy.unsupported:
            raise DenyError(
                f"policy requires {', '.join(policy.unsupported)}, which vouch does not support"
            )
        trust = policy.trust
        if trust is None or not trust.enabled:
            decision.allowed = True
            decision.reasons.append(f"allowed by {decision.policy} (no trust requirement)")
            return
        signers = resolve_signers(trust, policies, namespace)
        login = credentials.get(ref.domain)
        if trust.credentials_secret:
            # The policy's own registry login wins over the pod's pull secrets.
            secret = policies.secret(trust.credentials_secret, namespace)
            if secret is None:
                raise DenyError(f"credentials secret {trust.credentials_secret} not found")
            login = docker_credentials(secret).get(ref.domain, login)
        trusted = await self._trusted(ref, trust, login)
        digest = _released_digest(trusted, ref, signers, trust)
        decision.digest = digest
        decision.allowed = True
        decision.reasons.append(f"signed: {ref.name} {ref.tag or 'latest'} → {digest}")
        if policy.mutate_image:
            pinned = ImageReference(ref.domain, ref.path, ref.tag, digest)
            decision.pinned = str(pinned)

    def _server(self, ref: ImageReference, trust: TrustPolicy) -> str:
        server = (
            trust.trust_server or KNOWN_TRUST_SERVERS.get(ref.domain) or self.default_trust_server
        )
        if not server:
            raise DenyError(f"no trust server configured for {ref.domain} (set trust.trustServer)")
        return server

    def _pinning(self, ref: ImageReference, trust: TrustPolicy) -> TrustPinning:
        if trust.root_key_ids:
            return TrustPinning(certs={ref.name: list(trust.root_key_ids)}, disable_tofu=True)
        if trust.root_ca is not None:
            return TrustPinning(ca={ref.name: trust.root_ca}, disable_tofu=True)
        return TrustPinning()

    async def _trusted(
        self, ref: ImageReference, trust: TrustPolicy, login: Credentials | None = None
    ) -> TrustedSet:
        server = self._server(ref, trust)
        pinning = self._pinning(ref, trust)
        pin_id = hashlib.sha256(repr(pinning).encode()).hexdigest()[:16]
        # Everything of the policy that decides how trust data is fetched is in
        # the key (server, pinned roots, the server's CA): a policy that changes
        # one of them never gets data fetched under the old one.
        ca_id = hashlib.sha256(trust.server_ca or b"").hexdigest()[:16]
        key = (server, ref.name, pin_id, ca_id)
        hit = self._trust.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now and _earliest_expiry(hit[1]) > timefmt.now():
            self.cache_hits += 1
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            self.cache_hits += 1
        else:
            # The fetch is a task of its own, shared by every request that
            # wants this key meanwhile: one request hitting its deadline (and
            # being cancelled) must not cancel the fetch the others wait for.
            self.cache_misses += 1
            previous = hit[1] if hit is not None else None
            pending = asyncio.get_running_loop().create_task(
                self._fetch_and_cache(
                    key,
                    server=server,
                    ref=ref,
                    trust=trust,
                    pinning=pinning,
                    pin_id=pin_id,
                    login=login,
                    previous=previous,
                )
            )
            pending.add_done_callback(_retrieve)
            self._inflight[key] = pending
        return await asyncio.shield(pending)

    async def _fetch_and_cache(
        self,
        key: tuple[str, str, str, str],
        *,
        server: str,
        ref: ImageReference,
        trust: TrustPolicy,
        pinning: TrustPinning,
        pin_id: str,
        login: Credentials | None,
        previous: TrustedSet | None,
    ) -> TrustedSet:
        try:
            trusted = await self._fetch(
                server, ref, trust, pinning, pin_id, login=login, previous=previous
            )
        finally:
            self._inflight.pop(key, None)
        # Never cached past the earliest expiry of anything in the set (checked
        # again on each hit, against the wall clock, which may jump).
        left = (_earliest_expiry(trusted) - timefmt.now()).total_seconds()
        ttl = max(0.0, min(self.cache_ttl, left))
        self._trust[key] = (time.monotonic() + ttl, trusted)
        return trusted

    async def _fetch(
        self,
        server: str,
        ref: ImageReference,
        trust: TrustPolicy,
        pinning: TrustPinning,
        pin_id: str,
        *,
        login: Credentials | None,
        previous: TrustedSet | None = None,
    ) -> TrustedSet:
        who = (
            hashlib.sha256(f"{login.username}\0{login.password}".encode()).hexdigest()
            if login
            else ""
        )
        rkey = (server, trust.server_ca, who)
        remote = self._remotes.get(rkey)
        if remote is None:
            # Only the pod's or the policy's login, never the webhook process's own
            # NOTARY_AUTH or Docker config: with none, tokens are asked for anonymously.
            auth = TokenAuth(
                _fixed(login) if login is not None else None,
                environ={},
                use_docker_config=False,
            )
            remote = self._remotes[rkey] = self.remote_factory(server, trust, auth)
        if previous is not None and await _still_current(remote, ref.name, previous):
            return previous
        trust_dir = self.cache_dir / hashlib.sha256(server.encode()).hexdigest()[:16] / pin_id
        repo = Repository(ref.name, remote, trust_dir, pinning=pinning)
        # The release role is what _released_digest reads first: on first
        # contact it comes in the same round trip as the top-level files.
        result = await repo.refresh(prefetch=RELEASE_ROLES[:1])
        return result.trusted


async def _still_current(remote: Remote, gun: str, trusted: TrustedSet) -> bool:
    """One round trip: is the trusted set's timestamp still the server's, and
    is nothing in the set expired? Then nothing it pins has changed."""
    stamp = trusted.timestamp
    if stamp is None or stamp.raw is None:
        return False
    try:
        current = await remote.get_metadata(gun, "timestamp.json", MAX_TIMESTAMP_SIZE)
    except Exception:  # any doubt: do the full, verified refresh
        return False
    if current != stamp.raw:
        return False
    loaded = [trusted.root, stamp, trusted.snapshot, *trusted.targets.values()]
    return all(md is not None for md in loaded) and _earliest_expiry(trusted) > timefmt.now()


def _earliest_expiry(trusted: TrustedSet) -> datetime:
    """When the first piece of a trusted set expires (root, timestamp,
    snapshot, targets or a delegation); the distant past if one is missing."""
    loaded = [trusted.root, trusted.timestamp, trusted.snapshot, *trusted.targets.values()]
    if any(md is None for md in loaded):
        return datetime.min.replace(tzinfo=UTC)
    return min(md.signed.expires_at for md in loaded if md is not None)


def _retrieve(task: asyncio.Task[TrustedSet]) -> None:
    """Mark a shared fetch's failure as seen (its waiters, if any, got it)."""
    if not task.cancelled():
        task.exception()


def _fixed(login: Credentials) -> Callable[[str], Credentials]:
    """A credentials callback that always offers one login (a pod's pull secret)."""

    def callback(_url: str) -> Credentials:
        return login

    return callback


RELEASE_ROLES = ("targets/releases", "targets")


def _released_digest(
    trusted: TrustedSet, ref: ImageReference, signers: tuple[Signer, ...], trust: TrustPolicy
) -> str:
    """The digest the trust data releases for this reference, checked against
    the required signers; raises :class:`DenyError` with the reason otherwise.

    As ``docker pull`` with content trust does, the release is what
    ``targets/releases`` signs, else what ``targets`` signs; other delegations
    count only when a policy names them as required signers.
    """
    counted = set(RELEASE_ROLES) | {s.role for s in signers}
    if ref.tag is None and ref.digest is not None:
        hexdigest = ref.digest.removeprefix("sha256:")
        candidates = [
            entry
            for name in trusted.all_targets()
            for entry in trusted.find_all(name)
            if entry.role in counted and entry.meta.sha256_hex() == hexdigest
        ]
        if not candidates:
            raise DenyError(f"digest {ref.digest} is not signed in {ref.name}")
        if signers:
            # The required signers must sign this digest under one tag; any
            # tag that satisfies them will do (not just the first found).
            failure: DenyError | None = None
            for tag_name in dict.fromkeys(c.name for c in candidates):
                try:
                    _check_signers(trusted, tag_name, f"sha256:{hexdigest}", signers, trust)
                except DenyError as exc:
                    failure = failure or exc
                else:
                    break
            else:
                assert failure is not None
                raise failure
        return f"sha256:{hexdigest}"
    tag = ref.tag or "latest"
    entries = {info.role: info for info in trusted.find_all(tag)}
    found = next((entries[r] for r in RELEASE_ROLES if r in entries), None)
    if found is None and signers:
        found = next((entries[s.role] for s in signers if s.role in entries), None)
    if found is None:
        raise DenyError(f"no signed target for tag {tag!r} in {ref.name}")
    digest = _digest(found)
    if signers:
        _check_signers(trusted, tag, digest, signers, trust)
    if ref.digest is not None and ref.digest != digest:
        raise DenyError(f"tag {tag!r} is signed for {digest}, not {ref.digest}")
    return digest


def _digest(info: TargetInfo) -> str:
    hexdigest = info.meta.sha256_hex()
    if hexdigest is None:
        raise DenyError(f"target {info.name!r} has no sha256 digest")
    return f"sha256:{hexdigest}"


def _signing_key_material(trusted: TrustedSet, role: str) -> set[str]:
    """The keys (by bare key ID) that actually signed ``role``'s metadata.

    Being *listed* for the role is not enough: with a threshold of 1 any
    listed key can sign alone, so a pinned signer is satisfied only by its
    own valid signature.
    """
    md = trusted.targets.get(role)
    parent = trusted.targets.get(role.rsplit("/", 1)[0])
    if md is None or parent is None or parent.signed.delegations is None:
        return set()
    spec = parent.signed.delegations.role(role)
    if spec is None:
        return set()
    keys = parent.signed.delegations.keys
    listed = {k: keys[k] for k in spec.keyids if k in keys}
    try:
        signed = md.verified_keyids(listed, 1, role)
    except TrustError:
        return set()
    return {listed[k].canonical_keyid() for k in signed}


def _check_signers(
    trusted: TrustedSet, tag: str, digest: str, signers: tuple[Signer, ...], trust: TrustPolicy
) -> None:
    entries = {info.role: info for info in trusted.find_all(tag)}
    satisfied, failures = 0, []
    for signer in signers:
        info = entries.get(signer.role)
        if info is None:
            failures.append(f"no signature found for role {signer.role}")
            continue
        wanted = {k.canonical_keyid() for k in signer.keys}
        if not wanted & _signing_key_material(trusted, signer.role):
            failures.append(f"{signer.role} is not signed with the pinned key")
            continue
        if _digest(info) != digest:
            failures.append(f"{signer.role} signs {tag!r} for another digest ({_digest(info)})")
            continue
        satisfied += 1
    needed = trust.threshold or len(signers)
    if satisfied < needed:
        raise DenyError(
            f"{satisfied} of {needed} required signers signed {tag!r}: " + "; ".join(failures)
        )
