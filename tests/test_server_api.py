"""vouch server's notary-server API in process: routes, headers, validation, attacks.

Repositories are built with vouch's core (tests/server_helpers.py); every
refused update is checked to have stored nothing, by publishing a good update
right after it or by reading the current files back.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

import pytest

from server_helpers import Publisher, make_client, multipart
from vouch.tuf.metadata import Metadata, Timestamp
from vouch.tuf.trusted import TrustedSet

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _initialised(gun: str = "example.com/app/one", **kw: object) -> tuple[object, Publisher]:
    client, _service = make_client()
    pub = Publisher(gun, **kw)  # type: ignore[arg-type]
    await pub.init(client)
    pub.add("v1", b"one")
    pub.sign_root()
    pub.sign_targets("targets")
    resp = await pub.publish(client, pub.upload("root", "targets"))
    assert resp.status_code == 200, resp.text
    return client, pub


async def _verify(client: object, pub: Publisher) -> TrustedSet:
    async def get(name: str) -> bytes:
        resp = await client.get(f"/v2/{pub.gun}/_trust/tuf/{name}")  # type: ignore[attr-defined]
        assert resp.status_code == 200, (name, resp.text)
        return bytes(resp.content)

    ts = TrustedSet(pub.gun, await get("root.json"), bootstrap=True)
    t = ts.update_timestamp(await get("timestamp.json"))
    snap_hex = t.signed.meta["snapshot"].sha256_hex()
    s = ts.update_snapshot(await get(f"snapshot.{snap_hex}.json"))
    ts.update_targets(await get(f"targets.{s.signed.meta['targets'].sha256_hex()}.json"))
    for d in ts.delegations_of("targets"):
        if d.name in s.signed.meta:
            ts.update_delegated_targets(
                await get(f"{d.name}.{s.signed.meta[d.name].sha256_hex()}.json"), d.name
            )
    return ts


async def test_first_publish_serves_a_verifiable_repository() -> None:
    client, pub = await _initialised()
    ts = await _verify(client, pub)
    assert set(ts.all_targets()) == {"v1"}
    assert ts.timestamp is not None and ts.timestamp.signed.version == 1


async def test_metadata_headers_match_notary_server() -> None:
    client, pub = await _initialised()
    cur = await client.get(f"/v2/{pub.gun}/_trust/tuf/root.json")
    assert cur.headers["content-type"] == "text/plain; charset=utf-8"
    assert cur.headers["cache-control"] == "public, max-age=300, s-maxage=300, must-revalidate"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d UTC", cur.headers["last-modified"])
    by_version = await client.get(f"/v2/{pub.gun}/_trust/tuf/1.root.json")
    assert by_version.content == cur.content
    padded = await client.get(f"/v2/{pub.gun}/_trust/tuf/{'0' * 30}1.root.json")
    assert padded.content == cur.content  # Go's ParseInt reads leading zeros
    assert by_version.headers["cache-control"] == "public, max-age=2592000, s-maxage=2592000"
    import hashlib

    digest = hashlib.sha256(cur.content).hexdigest()
    by_hash = await client.get(f"/v2/{pub.gun}/_trust/tuf/root.{digest}.json")
    assert by_hash.content == cur.content
    for missing in (
        f"root.{digest.upper()}.json",
        f"root.{hashlib.sha512(cur.content).hexdigest()}.json",
        "0.root.json",
        "9.root.json",
        "9" * 5000 + ".root.json",  # past Python's int parsing limit: a 404, not a 500
        "0" * 5000 + "2.root.json",
        "99999999999999999999.root.json",  # past 64 bits
        "targets/nope.json",
    ):
        resp = await client.get(f"/v2/{pub.gun}/_trust/tuf/{missing}")
        assert resp.status_code == 404, missing
        assert resp.json()["errors"][0]["code"] == "METADATA_NOT_FOUND"
        assert "cache-control" not in resp.headers
    head = await client.head(f"/v2/{pub.gun}/_trust/tuf/root.json")
    assert head.status_code == 404


async def test_ping_and_unknown_routes() -> None:
    client, _ = make_client()
    ping = await client.get("/v2/")
    assert ping.status_code == 200 and ping.content == b"{}"
    nf = await client.get("/v2/nothing/here")
    assert nf.status_code == 404 and nf.content.endswith(b"\n")
    assert (await client.patch("/v2/x/_trust/tuf/")).status_code == 405


async def test_key_endpoints_reuse_unused_key_and_rotate() -> None:
    client, _ = make_client()
    a = await client.get("/v2/example.com/k/_trust/tuf/timestamp.key")
    b = await client.get("/v2/example.com/k/_trust/tuf/timestamp.key")
    assert a.status_code == 200 and a.content == b.content
    assert a.content.startswith(b'{"keytype":"ecdsa","keyval":{"public":"')
    assert a.content.endswith(b'","private":null}}')
    rotated = await client.post("/v2/example.com/k/_trust/tuf/timestamp.key")
    assert rotated.status_code == 200 and rotated.content != a.content
    assert (await client.get("/v2/example.com/k/_trust/tuf/root.key")).status_code == 404


async def test_server_managed_snapshot() -> None:
    client, pub = await _initialised("example.com/app/srv", snapshot_by_server=True)
    pub.add("v2", b"two")
    pub.sign_targets("targets")
    resp = await pub.publish(client, pub.upload("targets", snapshot=False))
    assert resp.status_code == 200, resp.text
    ts = await _verify(client, pub)
    assert set(ts.all_targets()) == {"v1", "v2"}
    assert ts.snapshot is not None and ts.snapshot.signed.version == 2


async def test_delegation_publish_and_undeclared_delegation() -> None:
    client, pub = await _initialised()
    pub.delegate("targets/releases", ["rel/"])
    pub.add("rel/1", b"r1", role="targets/releases")
    pub.sign_targets("targets")
    pub.sign_targets("targets/releases")
    resp = await pub.publish(client, pub.upload("targets", "targets/releases"))
    assert resp.status_code == 200, resp.text
    ts = await _verify(client, pub)
    assert ts.find_target("rel/1") is not None
    # A delegation nobody declared.
    pub.targets["targets/ghost"] = pub.targets["targets/releases"]
    pub.delegates["targets/ghost"] = pub.delegates["targets/releases"]
    pub.sign_targets("targets/ghost")
    resp = await pub.publish(client, pub.upload("targets/ghost"))
    assert resp.status_code == 400
    assert "delegation does not exist" in resp.text


def _error(resp: object) -> dict[str, object]:
    body = resp.json()  # type: ignore[attr-defined]
    assert len(body["errors"]) == 1
    return body["errors"][0]  # type: ignore[no-any-return]


async def _assert_unchanged(client: object, pub: Publisher, before: dict[str, bytes]) -> None:
    for role, data in before.items():
        resp = await client.get(f"/v2/{pub.gun}/_trust/tuf/{role}.json")  # type: ignore[attr-defined]
        assert resp.content == data, f"{role} changed after a refused update"


async def _current(client: object, pub: Publisher) -> dict[str, bytes]:
    out = {}
    for role in ("root", "targets", "snapshot", "timestamp"):
        resp = await client.get(f"/v2/{pub.gun}/_trust/tuf/{role}.json")  # type: ignore[attr-defined]
        out[role] = resp.content
    return out


async def test_bad_signature_refused_and_nothing_stored() -> None:
    client, pub = await _initialised()
    before = await _current(client, pub)
    pub.add("evil", b"x")
    data = pub.sign_targets("targets").replace(b'"evil"', b'"evi1"')
    pub.files["targets"] = data
    resp = await pub.publish(client, pub.upload("targets"))
    err = _error(resp)
    assert resp.status_code == 400 and err["code"] == "INVALID_UPDATE"
    assert err["detail"]["Name"] == "ErrBadTargets"  # type: ignore[index]
    await _assert_unchanged(client, pub, before)


async def test_version_not_bumped_is_version_error() -> None:
    client, pub = await _initialised()
    before = await _current(client, pub)
    pub.versions["targets"] -= 1
    pub.sign_targets("targets")
    resp = await pub.publish(client, pub.upload("targets"))
    assert resp.status_code == 400 and _error(resp)["code"] == "VERSION"
    await _assert_unchanged(client, pub, before)


async def test_huge_version_jump_refused_tuf_01_002() -> None:
    client, pub = await _initialised()
    pub.versions["targets"] = 2**31
    pub.sign_targets("targets")
    resp = await pub.publish(client, pub.upload("targets"))
    assert resp.status_code == 400 and "jumps too far" in resp.text
    # The repository still accepts a normal next version.
    pub.versions["targets"] = 1
    pub.sign_targets("targets")
    assert (await pub.publish(client, pub.upload("targets"))).status_code == 200


async def test_unsigned_content_refused_tuf_01_001() -> None:
    client, pub = await _initialised()
    before = await _current(client, pub)
    snap = pub.upload()["snapshot"]
    doc = json.loads(snap)
    doc["extra"] = {"unsigned": True}
    bad = json.dumps(doc).encode()
    resp = await pub.publish(client, {"snapshot": bad})
    assert resp.status_code == 400 and "unsigned content" in resp.text
    await _assert_unchanged(client, pub, before)
    pub.add("v2", b"two")
    pub.sign_targets("targets")
    assert (await pub.publish(client, pub.upload("targets"))).status_code == 200


async def test_snapshot_not_pinning_uploaded_targets_refused() -> None:
    client, pub = await _initialised()
    snap = pub.upload()["snapshot"]  # pins the old targets
    pub.add("v2", b"two")
    pub.sign_targets("targets")
    resp = await pub.publish(client, {"targets": pub.files["targets"], "snapshot": snap})
    assert resp.status_code == 400
    assert _error(resp)["detail"]["Name"] == "ErrBadSnapshot"  # type: ignore[index]


async def test_root_rotation_rules() -> None:
    from vouch.crypto.certs import root_key
    from vouch.crypto.privkey import PrivateKey

    client, pub = await _initialised()
    new_priv = PrivateKey.generate("ecdsa")
    new_pub = root_key(new_priv, pub.gun, now=pub.now)
    pub.root.roles["root"].keyids = [new_pub.keyid]
    pub.root.keys[new_pub.keyid] = new_pub
    pub.root.version = 2
    # Signed only by the new key: refused.
    md = Metadata(pub.root)
    md.sign(new_priv.signer(new_pub))
    resp = await pub.publish(client, {"root": md.to_bytes()})
    assert resp.status_code == 400 and "could not rotate trust" in resp.text
    # Signed by old and new: accepted, and a client following the chain verifies.
    md.sign(new_priv.signer(new_pub), pub.root_priv.signer(pub.root_pub))
    pub.files["root"] = md.to_bytes()
    resp = await pub.publish(client, pub.upload("root"))
    assert resp.status_code == 200, resp.text
    ts = await _verify(client, pub)
    assert ts.root.signed.version == 2


async def test_expired_root_certificate_can_be_recovered_by_rotation() -> None:
    """notary bricks such a repository (pitfall 29); vouch accepts a root rotation."""
    from datetime import UTC, datetime

    from vouch.crypto.certs import root_certificate, root_key
    from vouch.crypto.privkey import PrivateKey
    from vouch.tuf.keys import certificate_key

    client, service = make_client()
    pub = Publisher("example.com/app/expiring")
    await pub.init(client)
    # Replace the root certificate by one that expires in a second.
    short = certificate_key(
        [root_certificate(pub.root_priv, pub.gun, validity=timedelta(seconds=1))]
    )
    pub.root.roles["root"].keyids = [short.keyid]
    pub.root.keys = {k: v for k, v in pub.root.keys.items() if v.keytype != "ecdsa-x509"}
    pub.root.keys[short.keyid] = short
    pub.root_pub = short
    pub.sign_root()
    pub.sign_targets("targets")
    assert (await pub.publish(client, pub.upload("root", "targets"))).status_code == 200
    await asyncio.sleep(1.5)
    # With the certificate expired, a plain targets update is refused with a hint...
    pub.sign_targets("targets")
    resp = await pub.publish(client, pub.upload("targets"))
    assert resp.status_code == 400 and "rotate the root key" in resp.text
    # ...and a rotation to a fresh certificate (signed by the old key too) recovers it.
    fresh = root_key(pub.root_priv, pub.gun, now=datetime.now(UTC))
    pub.root.roles["root"].keyids = [fresh.keyid]
    pub.root.keys[fresh.keyid] = fresh
    pub.root.version = 2
    md = Metadata(pub.root)
    md.sign(pub.root_priv.signer(fresh), pub.root_priv.signer(short))
    pub.files["root"] = md.to_bytes()
    pub.root_pub = fresh
    resp = await pub.publish(client, pub.upload("root"))
    assert resp.status_code == 200, resp.text
    assert PrivateKey is not None and service is not None


async def test_delete_removes_exactly_one_gun() -> None:
    client, _ = make_client()
    pubs = {}
    for gun in ("example.com/a/b", "example.com/a/bc", "example.com/a/b/c"):
        pub = Publisher(gun)
        await pub.init(client)
        pub.sign_root()
        pub.sign_targets("targets")
        assert (await pub.publish(client, pub.upload("root", "targets"))).status_code == 200
        pubs[gun] = pub
    assert (await client.delete("/v2/example.com/a/b/_trust/tuf/")).status_code == 200
    assert (await client.get("/v2/example.com/a/b/_trust/tuf/root.json")).status_code == 404
    for other in ("example.com/a/bc", "example.com/a/b/c"):
        assert (await client.get(f"/v2/{other}/_trust/tuf/root.json")).status_code == 200
    feed = (await client.get("/v2/_trust/changefeed?records=10")).json()
    assert feed["records"][-1]["Category"] == "deletion"
    assert feed["records"][-1]["GUN"] == "example.com/a/b"


async def test_changefeed_paging_and_parameters() -> None:
    client, pub = await _initialised()
    for i in range(3):
        pub.add(f"x{i}", b"x")
        pub.sign_targets("targets")
        assert (await pub.publish(client, pub.upload("targets"))).status_code == 200
    feed = (await client.get("/v2/_trust/changefeed?records=2")).json()
    assert feed["count"] == 2 and [r["Version"] for r in feed["records"]] == [1, 2]
    assert isinstance(feed["records"][0]["ID"], str)
    nxt = (
        await client.get(f"/v2/_trust/changefeed?records=2&change_id={feed['records'][-1]['ID']}")
    ).json()
    assert [r["Version"] for r in nxt["records"]] == [3, 4]
    last = (await client.get("/v2/_trust/changefeed?records=-1&change_id=-1")).json()
    assert [r["Version"] for r in last["records"]] == [4]
    per_gun = (await client.get(f"/v2/{pub.gun}/_trust/changefeed?records=10")).json()
    assert per_gun["count"] == 4
    bad = await client.get("/v2/_trust/changefeed")
    assert bad.status_code == 400 and _error(bad)["code"] == "INVALID_PARAMETERS"
    bad2 = await client.get("/v2/_trust/changefeed?records=1&change_id=abc")
    assert bad2.status_code == 400
    # Leading zeros are read as Go reads them, however many; thousands of digits are
    # "out of range" (a 400), never a crash of Python's integer parsing.
    padded = await client.get("/v2/_trust/changefeed?records=" + "0" * 5000 + "2")
    assert padded.status_code == 200 and padded.json()["count"] == 2
    huge = await client.get("/v2/_trust/changefeed?records=" + "9" * 5000)
    assert huge.status_code == 400 and "out of range" in _error(huge)["detail"]


@pytest.mark.parametrize(
    "gun",
    ["..", "a/../b", "a//b", "/abs", "a/", "x" * 256, "a b", "a%00b", "a*b"],
)
async def test_invalid_guns_refused(gun: str) -> None:
    client, _ = make_client()
    body, ctype = multipart({"root": b"{}"})
    resp = await client.post(
        f"/v2/{gun}/_trust/tuf/", content=body, headers={"Content-Type": ctype}
    )
    assert resp.status_code in (400, 404)
    assert resp.status_code < 500


async def test_malformed_uploads_get_clear_4xx() -> None:
    client, pub = await _initialised()
    url = f"/v2/{pub.gun}/_trust/tuf/"
    cases = [
        (b"not multipart", "text/plain", "MALFORMED_UPLOAD"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x", "MALFORMED_UPLOAD"),
    ]
    for body, ctype, code in cases:
        resp = await client.post(url, content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 400 and _error(resp)["code"] == code
    for files, code in [
        ({"foo/targets/releases": b"{}"}, "INVALID_ROLE"),
        ({"targets": b"{not json"}, "MALFORMED_JSON"),
        (
            {"targets": b'{"signed":{"_type":"Targets","version":"1","expires":"x"}}'},
            "MALFORMED_JSON",
        ),
        ({"": b"{}"}, "NO_FILENAME"),
    ]:
        body, ctype = multipart(files)
        resp = await client.post(url, content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 400, resp.text
        assert _error(resp)["code"] == code, files


async def test_upload_size_limit() -> None:
    client, _ = make_client(max_upload_bytes=1000)
    body, ctype = multipart({"root": b"x" * 2000})
    resp = await client.post(
        "/v2/example.com/big/_trust/tuf/", content=body, headers={"Content-Type": ctype}
    )
    assert resp.status_code == 413


async def test_absurd_content_length_is_too_large_not_a_crash() -> None:
    """A 5,000-digit Content-Length (past Python's int parsing limit) is a 413."""
    client, _ = make_client(max_upload_bytes=1000)
    app = client._transport.app  # type: ignore[attr-defined]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/example.com/big/_trust/tuf/",
        "raw_path": b"/v2/example.com/big/_trust/tuf/",
        "query_string": b"",
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=x"),
            (b"content-length", b"9" * 5000),
        ],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("vouch.test", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413


async def test_timestamp_resigned_near_expiry_and_served_when_signing_fails() -> None:
    client, pub = await _initialised()
    service = client._transport.app.state.service  # type: ignore[attr-defined]
    first = Metadata.from_bytes(
        (await client.get(f"/v2/{pub.gun}/_trust/tuf/timestamp.json")).content
    )
    service.timestamp_refresh = timedelta(days=30)  # everything is "near expiry" now
    second = Metadata.from_bytes(
        (await client.get(f"/v2/{pub.gun}/_trust/tuf/timestamp.json")).content
    )
    assert isinstance(second.signed, Timestamp)
    assert second.signed.version == first.signed.version + 1
    await _verify(client, pub)
    latest = Metadata.from_bytes(
        (await client.get(f"/v2/{pub.gun}/_trust/tuf/timestamp.json")).content
    )

    async def broken(key_id: str, message: bytes) -> object:
        raise ConnectionError("signer down")

    service.keys.sign = broken
    third = await client.get(f"/v2/{pub.gun}/_trust/tuf/timestamp.json")
    assert third.status_code == 200  # the stored, still valid timestamp (notary#598)
    assert Metadata.from_bytes(third.content).signed.version == latest.signed.version
    # An update that needs a server signature gets a clear 503, and stores nothing.
    pub.sign_targets("targets")
    resp = await pub.publish(client, pub.upload("targets"))
    assert resp.status_code == 503


async def test_concurrent_publishers_never_fork() -> None:
    client, pub = await _initialised("example.com/app/race", snapshot_by_server=True)

    async def one(i: int) -> int:
        pub.add(f"t{i}", str(i).encode())
        data = pub.sign_targets("targets")
        return (await pub.publish(client, {"targets": data})).status_code

    codes = await asyncio.gather(*(one(i) for i in range(20)))
    assert set(codes) <= {200, 400}
    ok = codes.count(200)
    feed = (await client.get(f"/v2/{pub.gun}/_trust/changefeed?records=100")).json()
    versions = [r["Version"] for r in feed["records"]]
    assert versions == list(range(1, ok + 2))  # the first publish plus each accepted one
    await _verify(client, pub)


async def test_health_and_metrics() -> None:
    client, _pub = await _initialised()
    health = await client.get("/_notary_server/health")
    assert health.status_code == 200 and health.json() == {}
    metrics = await client.get("/metrics")
    assert b"vouch_server_http_requests_total" in metrics.content
    assert b'operation="UpdateTUF"' in metrics.content


async def test_a_refused_metadata_get_is_decided_once() -> None:
    """The short path for metadata GETs answers a refusal itself: the authorizer
    (which logs refusals) is asked once per request, not once per path."""
    import httpx
    from starlette.requests import Request
    from starlette.responses import Response

    from vouch.keyservice.memory import MemoryKeyService
    from vouch.server.app import build_app
    from vouch.server.service import TrustService
    from vouch.storage.memory import MemoryStore

    asked: list[tuple[str, str | None]] = []

    class Refuse:
        def check(self, request: Request, kind: str, gun: str | None) -> Response | None:
            asked.append((kind, gun))
            return Response(b"no", status_code=401, headers={"WWW-Authenticate": "Bearer x"})

    app = build_app(TrustService(MemoryStore(), MemoryKeyService()), authorizer=Refuse())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://vouch.test"
    ) as client:
        resp = await client.get("/v2/example.com/app/_trust/tuf/timestamp.json")
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer x"
    assert asked == [("metadata_get", "example.com/app")]
