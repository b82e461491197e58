"""vouch.client.auth: the registry token flow against vouch's server with token auth.

Everything runs in process: vouch's app with :class:`TokenAuthMiddleware`
(``vouch.test``) and a small token server (``auth.test``) that issues real
ES256 tokens through :mod:`token_server`'s authority, answer both the GET
(HTTP Basic) and the OAuth2 refresh-token POST, and records every request, so
the tests can count token fetches and 401s. One shared clock drives the
client's token expiry, the server's token checks and token issuance, so
expiry is tested without sleeping.

The last test repeats the essentials with real programs: the real
notary-server with token auth and the threaded token server.

Users: alice (push, pull on example.com/alice/*), admin (``*`` on
example.com/* and the catalog), anonymous (pull on example.com/public/*);
``idtok-alice`` is alice's identity (refresh) token.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notary_harness import NotaryServer
from server_helpers import Publisher
from test_client_remote import initialised, verify
from token_server import ANONYMOUS, Scope, TokenServer, User, notary_auth, rule
from vouch.client.auth import (
    CredentialError,
    Credentials,
    TokenAuth,
    bearer_challenge,
    docker_credentials,
    parse_challenges,
)
from vouch.client.errors import Unauthorized
from vouch.client.remote import MAX_ROOT_SIZE, MAX_TIMESTAMP_SIZE, Remote
from vouch.keyservice.memory import MemoryKeyService
from vouch.server.app import build_app
from vouch.server.auth import Challenge as ServerChallenge
from vouch.server.auth import TokenAuthConfig, TokenAuthorizer, required_access
from vouch.server.authhttp import TokenAuthMiddleware
from vouch.server.service import TrustService
from vouch.storage.memory import MemoryStore

pytestmark = pytest.mark.anyio

SERVER = "http://vouch.test"
REALM = "http://auth.test/token"
SERVICE = "notary-server"
ALICE_GUN = "example.com/alice/app"
PUBLIC_GUN = "example.com/public/lib"
PASSWORDS = {"alice": "alice-pw", "admin": "admin-pw"}
USERS = {
    "alice": User(PASSWORDS["alice"], (rule("example.com/alice/*", "push", "pull"),)),
    "admin": User(
        PASSWORDS["admin"],
        (rule("example.com/*", "*", "push", "pull"), rule("catalog", "*", type="registry")),
    ),
    ANONYMOUS: User("", (rule("example.com/public/*", "pull"),)),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """Shifted clocks: ``client`` for the client's token expiry (monotonic), ``server``
    for token issuance and the trust server's checks (epoch seconds)."""

    def __init__(self) -> None:
        self.client_offset = 0.0
        self.server_offset = 0.0

    def client(self) -> float:
        return time.monotonic() + self.client_offset

    def server(self) -> float:
        return time.time() + self.server_offset

    def advance(self, seconds: float) -> None:
        self.client_offset += seconds
        self.server_offset += seconds


@dataclass
class TokenRecord:
    method: str
    user: str | None  # Basic user; None without credentials
    account: str | None
    scopes: tuple[str, ...]
    service: str | None
    status: int
    form: dict[str, str] = field(default_factory=dict)


class TokenApp:
    """``GET /token`` with HTTP Basic, and ``POST /token`` with the refresh-token grant.

    Refresh tokens rotate: every POST answers with a new one, and the client
    must use the newest (all stay valid, as on Docker Hub).
    """

    def __init__(self, issuer: TokenServer, clock: Clock, expires_in: int = 300) -> None:
        self.issuer = issuer
        self.clock = clock
        self.expires_in = expires_in
        self.refresh_tokens = {"idtok-alice": "alice"}
        self.requests: list[TokenRecord] = []
        self.app = Starlette(routes=[Route("/token", self.token, methods=["GET", "POST"])])

    def reply(self, user: str, scopes: list[str], **extra: str) -> Response:
        access = self.issuer.granted(user, [Scope.parse(s) for s in scopes])
        token = self.issuer.issue(user, access, now=int(self.clock.server()))
        body = {"token": token, "access_token": token, "expires_in": self.expires_in, **extra}
        return JSONResponse(body)

    async def refresh(self, request: Request) -> Response:
        """The OAuth2 refresh-token grant, as docker/distribution's client posts it."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        user = self.refresh_tokens.get(form.get("refresh_token", ""))
        scopes = tuple(form.get("scope", "").split())
        rec = TokenRecord("POST", user, None, scopes, form.get("service"), 200, form)
        self.requests.append(rec)
        if form.get("grant_type") != "refresh_token" or user is None:
            rec.status = 401
            return JSONResponse({"error": "invalid_grant"}, status_code=401)
        new = f"idtok-{secrets.token_hex(4)}"
        self.refresh_tokens[new] = user
        return self.reply(user, list(scopes), refresh_token=new)

    async def token(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.refresh(request)
        query = request.query_params
        header = request.headers.get("authorization", "")
        user: str | None = None
        password = ""
        if header.lower().startswith("basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        rec = TokenRecord(
            "GET",
            user,
            query.get("account"),
            tuple(query.getlist("scope")),
            query.get("service"),
            200,
        )
        self.requests.append(rec)
        if user is not None:
            known = self.issuer.users.get(user)
            if not user or known is None or known.password != password:
                rec.status = 401
                return JSONResponse({"errors": [{"code": "UNAUTHORIZED"}]}, status_code=401)
        return self.reply(user or ANONYMOUS, list(rec.scopes))


class ClockedAuth(TokenAuthMiddleware):
    """The server's token auth, with its clock shifted like the test's."""

    def __init__(self, authorizer: TokenAuthorizer, clock: Clock) -> None:
        super().__init__(authorizer)
        self.clock = clock

    def check(self, request: Any, kind: str, gun: str | None) -> Response | None:
        required = required_access(request.method, kind, gun)
        result = self.authorizer.authorize(
            request.headers.get("authorization"),
            required,
            host=request.headers.get("host"),
            now=self.clock.server(),
        )
        if isinstance(result, ServerChallenge):
            return Response(result.body, status_code=result.status, headers=result.headers)
        return None


class Recorder:
    """ASGI wrapper that records (method, path, status, sent a bearer token)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str, int, bool]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        status = 0

        async def wrapped(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, wrapped)
        headers = dict(scope.get("headers", []))
        bearer = headers.get(b"authorization", b"").lower().startswith(b"bearer ")
        self.seen.append((scope["method"], scope["path"], status, bearer))

    def unauthorized(self) -> int:
        return sum(1 for s in self.seen if s[2] == 401)


class Router(httpx.AsyncBaseTransport):
    """Sends each request to the in-process app for its host."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.transports[request.url.host].handle_async_request(request)


@dataclass
class Stack:
    clock: Clock
    tokens: TokenApp
    vouch: Recorder
    transport: Router

    def remote(self, auth: TokenAuth) -> Remote:
        return Remote(SERVER, transport=self.transport, auth=auth)

    def auth(self, **kw: Any) -> TokenAuth:
        """A TokenAuth on the test clock that never looks at this machine's env or Docker."""
        kw.setdefault("environ", {})
        kw.setdefault("use_docker_config", False)
        return TokenAuth(clock=self.clock.client, **kw)

    def token_requests(self) -> list[TokenRecord]:
        return list(self.tokens.requests)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    clock = Clock()
    issuer = TokenServer(USERS, service=SERVICE, issuer="vouch-client-test")
    tokens = TokenApp(issuer, clock)
    config = TokenAuthConfig(
        realm=REALM,
        service=SERVICE,
        issuer=issuer.issuer,
        root_certs=[issuer.authority.root],
    )
    service = TrustService(MemoryStore(), MemoryKeyService())
    vouch = Recorder(build_app(service, authorizer=ClockedAuth(TokenAuthorizer(config), clock)))
    s = Stack(clock, tokens, vouch, Router({"vouch.test": vouch, "auth.test": tokens.app}))
    # Two repositories published by admin; then forget that set-up's requests.
    admin = s.auth(credentials=lambda server: Credentials("admin", PASSWORDS["admin"]))
    async with s.remote(admin) as r:
        await initialised(r, PUBLIC_GUN)
        await initialised(r, ALICE_GUN)
    tokens.requests.clear()
    vouch.seen.clear()
    yield s


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- anonymous ---------------------------------------------------------------------


async def test_anonymous_read_of_a_public_repository(stack: Stack) -> None:
    auth = stack.auth()
    async with stack.remote(auth) as r:
        ts = await verify(r, PUBLIC_GUN)
    assert set(ts.all_targets()) == {"v1"}
    (req,) = stack.token_requests()
    assert req.method == "GET" and req.user is None and req.account is None
    assert req.scopes == (f"repository:{PUBLIC_GUN}:pull",) and req.service == SERVICE
    # One 401 teaches the challenge; every later request carries the token at once.
    assert stack.vouch.unauthorized() == 1
    assert all(bearer for _, _, status, bearer in stack.vouch.seen if status == 200)
    assert auth.token_requests == 1


async def test_ping_learns_the_challenge(stack: Stack) -> None:
    async with stack.remote(stack.auth()) as r:
        assert await r.ping() is True
        await r.get_metadata(PUBLIC_GUN, "root.json", MAX_ROOT_SIZE)
    assert [s[2] for s in stack.vouch.seen] == [401, 200]  # the ping, then the read
    assert len(stack.token_requests()) == 1


async def test_private_read_without_credentials(stack: Stack) -> None:
    async with stack.remote(stack.auth()) as r:
        with pytest.raises(Unauthorized) as info:
            await r.get_metadata(ALICE_GUN, "root.json", MAX_ROOT_SIZE)
    assert info.value.scope == f"repository:{ALICE_GUN}:pull"
    assert info.value.error == "insufficient_scope"
    assert str(info.value).startswith(
        "you are not authorized to perform this operation: server returned 401."
    )


# -- NOTARY_AUTH ---------------------------------------------------------------------------


async def test_notary_auth_write_then_read(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTARY_AUTH", notary_auth("alice", "alice-pw"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # nothing there
    auth = TokenAuth(clock=stack.clock.client)  # reads the real environment
    async with stack.remote(auth) as r:
        pub = Publisher(ALICE_GUN + "2")
        await initialised(r, pub.gun)  # get_key + publish: one push,pull token
        writes = stack.token_requests()
        assert [(q.user, q.account, q.scopes) for q in writes] == [
            ("alice", "alice", (f"repository:{pub.gun}:push,pull",))
        ]
        ts = await verify(r, pub.gun)
    assert set(ts.all_targets()) == {"v1"}
    reads = stack.token_requests()[1:]
    # A read asks anonymously first, then with the login when that is not enough.
    assert [(q.user, q.scopes) for q in reads] == [
        (None, (f"repository:{pub.gun}:pull",)),
        ("alice", (f"repository:{pub.gun}:pull",)),
    ]


async def test_wrong_password_is_unauthorized(stack: Stack) -> None:
    auth = stack.auth(environ={"NOTARY_AUTH": notary_auth("alice", "nope")})
    async with stack.remote(auth) as r:
        with pytest.raises(Unauthorized) as info:
            await r.get_key(ALICE_GUN, "timestamp")
        assert "refused the credentials of alice from NOTARY_AUTH" in str(info.value)
        assert info.value.scope == f"repository:{ALICE_GUN}:push,pull"
        # Reads of a private repository end the same way, after the anonymous try.
        with pytest.raises(Unauthorized):
            await r.get_metadata(ALICE_GUN, "root.json", MAX_ROOT_SIZE)
    assert [q.status for q in stack.token_requests()] == [401, 200, 401]


async def test_user_without_access_is_unauthorized(stack: Stack) -> None:
    auth = stack.auth(environ={"NOTARY_AUTH": notary_auth("alice", "alice-pw")})
    async with stack.remote(auth) as r:
        with pytest.raises(Unauthorized) as info:
            await r.publish(PUBLIC_GUN, {"targets": b"{}"})
    assert info.value.scope == f"repository:{PUBLIC_GUN}:push,pull"
    assert info.value.error == "insufficient_scope"


@pytest.mark.parametrize("value", ["!!!", b64("no-colon"), b64(":pw-only")])
async def test_malformed_notary_auth(stack: Stack, value: str) -> None:
    async with stack.remote(stack.auth(environ={"NOTARY_AUTH": value})) as r:
        with pytest.raises(CredentialError, match="NOTARY_AUTH"):
            await r.get_key(ALICE_GUN, "timestamp")


async def test_callback_comes_first_and_may_be_async(stack: Stack) -> None:
    asked: list[str] = []

    async def creds(server: str) -> Credentials | None:
        asked.append(server)
        return Credentials("alice", "alice-pw", source="test callback")

    env = {"NOTARY_AUTH": notary_auth("admin", "wrong")}
    async with stack.remote(stack.auth(credentials=creds, environ=env)) as r:
        await r.get_key(ALICE_GUN, "timestamp")
        await r.get_key(ALICE_GUN, "snapshot")
    assert asked == [SERVER]  # resolved once per server
    assert [q.user for q in stack.token_requests()] == ["alice"]


# -- Docker config ---------------------------------------------------------------------------


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("key", ["vouch.test", "http://vouch.test", "https://vouch.test/v1/"])
@pytest.mark.parametrize("form", ["auth", "username"])
async def test_docker_config_auths(stack: Stack, tmp_path: Path, key: str, form: str) -> None:
    entry = (
        {"auth": b64("alice:alice-pw")}
        if form == "auth"
        else {"username": "alice", "password": "alice-pw"}
    )
    config = {"auths": {"other.example:5000": {"auth": b64("x:y")}, key: entry}}
    auth = stack.auth(
        environ={"DOCKER_CONFIG": str(write_config(tmp_path, config))}, use_docker_config=True
    )
    async with stack.remote(auth) as r:
        await r.get_key(ALICE_GUN, "timestamp")
    assert [q.user for q in stack.token_requests()] == ["alice"]


async def test_docker_config_in_home(stack: Stack, tmp_path: Path) -> None:
    write_config(tmp_path / ".docker", {"auths": {"vouch.test": {"auth": b64("alice:alice-pw")}}})
    auth = stack.auth(environ={"HOME": str(tmp_path)}, use_docker_config=True)
    async with stack.remote(auth) as r:
        await r.get_key(ALICE_GUN, "timestamp")
    assert [q.user for q in stack.token_requests()] == ["alice"]


HELPER = """\
#!{python}
import json, os, sys
server = sys.stdin.read()
with open(os.environ["HELPER_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), sys.argv[1:], server]) + "\\n")
with open(os.environ["HELPER_DB"]) as db:
    creds = json.load(db)
if sys.argv[1:] == ["get"] and server in creds:
    print(json.dumps(dict(ServerURL=server, **creds[server])))
    sys.exit(0)
print("credentials not found in native keychain")
sys.exit(1)
"""


@dataclass
class Helper:
    env: dict[str, str]
    log: Path

    def calls(self) -> list[list[Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def install_helper(tmp_path: Path, creds: dict[str, dict[str, str]], *names: str) -> Helper:
    """``docker-credential-<name>`` scripts on a private PATH, answering from ``creds``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names or ("test",):
        script = bin_dir / f"docker-credential-{name}"
        script.write_text(HELPER.format(python=sys.executable))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    db = tmp_path / "helper-db.json"
    db.write_text(json.dumps(creds))
    log = tmp_path / "helper.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "HELPER_DB": str(db),
        "HELPER_LOG": str(log),
        "DOCKER_CONFIG": str(tmp_path / "docker"),
    }
    return Helper(env, log)


@pytest.mark.parametrize(
    "config",
    [
        {"credsStore": "test"},
        {"auths": {"vouch.test": {}}, "credsStore": "test"},  # what docker login leaves
        {"credHelpers": {"vouch.test": "test"}},
        {"credHelpers": {"http://vouch.test": "test"}},
    ],
)
async def test_credential_helper(stack: Stack, tmp_path: Path, config: dict[str, Any]) -> None:
    helper = install_helper(tmp_path, {"vouch.test": {"Username": "alice", "Secret": "alice-pw"}})
    write_config(tmp_path / "docker", config)
    async with stack.remote(stack.auth(environ=helper.env, use_docker_config=True)) as r:
        await r.get_key(ALICE_GUN, "timestamp")
        # Another scope, another token: the helper is not run again.
        await r.get_metadata(ALICE_GUN, "root.json", MAX_ROOT_SIZE)
    assert [q.user for q in stack.token_requests()] == ["alice", None, "alice"]
    calls = helper.calls()
    assert calls[-1] == ["docker-credential-test", ["get"], "vouch.test"]
    assert len(calls) == 1


async def test_credential_helper_identity_token(stack: Stack, tmp_path: Path) -> None:
    helper = install_helper(
        tmp_path, {"vouch.test": {"Username": "<token>", "Secret": "idtok-alice"}}
    )
    write_config(tmp_path / "docker", {"credHelpers": {"vouch.test": "test"}})
    async with stack.remote(stack.auth(environ=helper.env, use_docker_config=True)) as r:
        await r.get_key(ALICE_GUN, "timestamp")  # push,pull
        await r.get_metadata(ALICE_GUN, "root.json", MAX_ROOT_SIZE)  # anonymous, then pull
    first, anonymous, second = stack.token_requests()
    assert first.method == "POST" and first.status == 200
    assert first.form == {
        "client_id": "vouch",
        "grant_type": "refresh_token",
        "refresh_token": "idtok-alice",
        "scope": f"repository:{ALICE_GUN}:push,pull",
        "service": SERVICE,
    }
    assert anonymous.method == "GET" and anonymous.user is None
    # The refresh token the server rotated to is the one used next.
    assert second.method == "POST" and second.status == 200
    assert second.form["refresh_token"] not in ("idtok-alice", "")
    assert stack.tokens.refresh_tokens[second.form["refresh_token"]] == "alice"
    assert second.scopes == (f"repository:{ALICE_GUN}:pull",)


async def test_docker_config_identity_token(stack: Stack, tmp_path: Path) -> None:
    config = {"auths": {"vouch.test": {"auth": b64(":"), "identitytoken": "idtok-alice"}}}
    env = {"DOCKER_CONFIG": str(write_config(tmp_path, config))}
    async with stack.remote(stack.auth(environ=env, use_docker_config=True)) as r:
        await r.get_key(ALICE_GUN, "timestamp")
    (req,) = stack.token_requests()
    assert req.method == "POST" and req.form["refresh_token"] == "idtok-alice"


async def test_bad_identity_token_is_unauthorized(stack: Stack, tmp_path: Path) -> None:
    config = {"auths": {"vouch.test": {"identitytoken": "revoked"}}}
    env = {"DOCKER_CONFIG": str(write_config(tmp_path, config))}
    async with stack.remote(stack.auth(environ=env, use_docker_config=True)) as r:
        with pytest.raises(Unauthorized, match="identity token"):
            await r.get_key(ALICE_GUN, "timestamp")


async def test_docker_credential_precedence(tmp_path: Path) -> None:
    helper = install_helper(
        tmp_path,
        {
            "vouch.test": {"Username": "from-helper", "Secret": "h"},
            "vouch.test:4443": {"Username": "from-port-helper", "Secret": "h"},
        },
        "test",
        "store",
    )
    conf = tmp_path / "docker"

    async def who(config: dict[str, Any], server: str = SERVER) -> str | None:
        write_config(conf, config)
        creds = await docker_credentials(server, environ=helper.env)
        return creds.username if creds else None

    inline = {"vouch.test": {"auth": b64("from-auths:p")}}
    # credHelpers for this registry beats inline auths, which beat the default store.
    assert await who({"auths": inline, "credHelpers": {"vouch.test": "test"}}) == "from-helper"
    assert await who({"auths": inline, "credsStore": "store"}) == "from-auths"
    assert await who({"auths": {"vouch.test": {}}, "credsStore": "store"}) == "from-helper"
    # A helper that is missing or has nothing falls through to the next source.
    assert await who({"auths": inline, "credHelpers": {"vouch.test": "absent"}}) == "from-auths"
    assert await who({"credsStore": "store"}, "http://unknown.test") is None
    # host:port is asked first, then the full URL.
    assert await who({"credsStore": "store"}, "https://vouch.test:4443") == "from-port-helper"
    assert helper.calls()[-1] == ["docker-credential-store", ["get"], "vouch.test:4443"]
    # A helper name that is a path is never run.
    assert await who({"credsStore": "../bin/docker-credential-test"}) is None
    # Unreadable configs are ignored.
    (conf / "config.json").write_text("{not json")
    assert await docker_credentials(SERVER, environ=helper.env) is None


@pytest.mark.parametrize(
    ("server", "key"),
    [
        ("https://notary.docker.io", "https://index.docker.io/v1/"),
        ("https://registry-1.docker.io", "docker.io"),
        ("https://docker.io", "index.docker.io"),
        ("https://index.docker.io", "registry-1.docker.io"),
        ("https://notary.example.com:4443", "notary.example.com:4443"),
        ("https://notary.example.com:4443", "https://notary.example.com:4443/v2/"),
        ("https://notary.example.com:4443", "notary.example.com"),
        ("https://Notary.Example.com", "notary.example.com"),
    ],
)
async def test_docker_config_key_matching(tmp_path: Path, server: str, key: str) -> None:
    write_config(tmp_path, {"auths": {"unrelated.example.com": {"auth": b64("no:no")}}})
    config = json.loads((tmp_path / "config.json").read_text())
    config["auths"][key] = {"auth": b64("yes:pw")}
    write_config(tmp_path, config)
    creds = await docker_credentials(server, environ={"DOCKER_CONFIG": str(tmp_path)})
    assert creds is not None and creds.username == "yes" and creds.password == "pw"


async def test_docker_config_prefers_the_exact_port(tmp_path: Path) -> None:
    auths = {
        "notary.example.com": {"auth": b64("bare:pw")},
        "notary.example.com:4443": {"auth": b64("port:pw")},
        "notary.example.com:5000": {"auth": b64("other:pw")},
    }
    env = {"DOCKER_CONFIG": str(write_config(tmp_path, {"auths": auths}))}
    creds = await docker_credentials("https://notary.example.com:4443", environ=env)
    assert creds is not None and creds.username == "port"
    del auths["notary.example.com:4443"]
    write_config(tmp_path, {"auths": auths})
    creds = await docker_credentials("https://notary.example.com:4443", environ=env)
    assert creds is not None and creds.username == "bare"


# -- the token cache ----------------------------------------------------------------------------


async def test_token_cache_is_reused(stack: Stack) -> None:
    auth = stack.auth()
    async with stack.remote(auth) as r:
        for _ in range(5):
            await r.get_metadata(PUBLIC_GUN, "timestamp.json", MAX_TIMESTAMP_SIZE)
    async with stack.remote(auth) as r2:  # another Remote sharing the TokenAuth
        await r2.get_metadata(PUBLIC_GUN, "root.json", MAX_ROOT_SIZE)
    assert len(stack.token_requests()) == 1 and auth.token_requests == 1
    assert stack.vouch.unauthorized() == 1
    # Another scope (another GUN) is another token.
    async with stack.remote(auth) as r:
        with pytest.raises(Unauthorized):
            await r.get_metadata(ALICE_GUN, "root.json", MAX_ROOT_SIZE)
    assert len(stack.token_requests()) == 2


async def test_concurrent_requests_fetch_one_token(stack: Stack) -> None:
    auth = stack.auth()
    async with stack.remote(auth) as r:
        assert await r.ping()
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(r.get_metadata, PUBLIC_GUN, "timestamp.json", MAX_TIMESTAMP_SIZE)
    assert len(stack.token_requests()) == 1


async def test_expired_token_is_renewed_before_use(stack: Stack) -> None:
    auth = stack.auth(environ={"NOTARY_AUTH": notary_auth("alice", "alice-pw")})
    async with stack.remote(auth) as r:
        await r.get_metadata(ALICE_GUN, "timestamp.json", MAX_TIMESTAMP_SIZE)
        assert [q.user for q in stack.token_requests()] == [None, "alice"]
        unauthorized = stack.vouch.unauthorized()
        stack.clock.advance(200)
        await r.get_metadata(ALICE_GUN, "timestamp.json", MAX_TIMESTAMP_SIZE)
        assert len(stack.token_requests()) == 2  # still valid: cached
        stack.clock.advance(200)  # past expires_in (300 s)
        await r.get_metadata(ALICE_GUN, "timestamp.json", MAX_TIMESTAMP_SIZE)
    # Renewed with the kind that worked (alice's), before sending: no extra 401.
    assert [q.user for q in stack.token_requests()] == [None, "alice", "alice"]
    assert stack.vouch.unauthorized() == unauthorized


async def test_token_refused_by_the_server_is_replaced(stack: Stack) -> None:
    auth = stack.auth()
    async with stack.remote(auth) as r:
        await r.get_metadata(PUBLIC_GUN, "timestamp.json", MAX_TIMESTAMP_SIZE)
        # The server's clock runs ahead: the cached token has expired there only.
        stack.clock.server_offset += 400
        await r.get_metadata(PUBLIC_GUN, "timestamp.json", MAX_TIMESTAMP_SIZE)
    assert len(stack.token_requests()) == 2
    statuses = [(status, bearer) for _, _, status, bearer in stack.vouch.seen]
    assert statuses == [(401, False), (200, True), (401, True), (200, True)]


async def test_token_reply_rules() -> None:
    """``access_token`` wins over ``token``; ``expires_in`` under 60 s counts as 60 s."""
    used: list[str | None] = []
    fetched = 0
    clock = [1000.0]

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal fetched
        if request.url.host == "auth.test":
            fetched += 1
            token = f"good{fetched}"
            return httpx.Response(
                200, json={"token": "ignored", "access_token": token, "expires_in": 10}
            )
        header = request.headers.get("authorization")
        used.append(header)
        if header is None:
            challenge = f'Bearer realm="{REALM}",service="{SERVICE}"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, content=b"{}")

    auth = TokenAuth(environ={}, use_docker_config=False, clock=lambda: clock[0])
    async with Remote(SERVER, transport=httpx.MockTransport(handler), auth=auth) as r:
        await r.get_metadata("g", "timestamp.json", 100)
        clock[0] += 50
        await r.get_metadata("g", "timestamp.json", 100)
        clock[0] += 10  # 60 s minus the refresh margin has passed
        await r.get_metadata("g", "timestamp.json", 100)
    assert used == [None, "Bearer good1", "Bearer good1", "Bearer good2"]


async def test_token_server_failures() -> None:
    def make(reply: httpx.Response) -> Remote:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.host == "auth.test":
                return reply
            challenge = f'Bearer realm="{REALM}",service="{SERVICE}"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})

        auth = TokenAuth(environ={}, use_docker_config=False)
        return Remote(SERVER, transport=httpx.MockTransport(handler), auth=auth)

    from vouch.client.errors import BadResponse, ServerUnavailable

    async with make(httpx.Response(503)) as r:
        with pytest.raises(ServerUnavailable, match="token server") as info:
            await r.get_metadata("g", "root.json", 100)
        assert info.value.status == 503
    async with make(httpx.Response(200, content=b"<html>")) as r:
        with pytest.raises(BadResponse, match="JSON"):
            await r.get_metadata("g", "root.json", 100)
    async with make(httpx.Response(200, json={"token": "a\r\nX-Evil: 1"})) as r:
        with pytest.raises(BadResponse, match="no usable token"):
            await r.get_metadata("g", "root.json", 100)
    # Anonymous access refused by the token server and no login: the server's 401 stands.
    async with make(httpx.Response(401)) as r:
        with pytest.raises(Unauthorized):
            await r.get_metadata("g", "root.json", 100)


# -- challenge parsing --------------------------------------------------------------------------


def test_challenge_parsing() -> None:
    (c,) = parse_challenges(
        [
            'Bearer realm="https://auth.example.com/token",service="notary-server",'
            'scope="repository:example.com/a:push,pull",error="insufficient_scope"'
        ]
    )
    assert c.scheme == "bearer" and c.realm == "https://auth.example.com/token"
    assert c.service == "notary-server" and c.error == "insufficient_scope"
    assert c.scope == "repository:example.com/a:push,pull"

    basic, bearer = parse_challenges(
        ['Basic realm="reg, with comma", BEARER Realm = "r\\"q" , service=svc,scope="s"']
    )
    assert basic.scheme == "basic" and basic.realm == "reg, with comma"
    assert bearer.scheme == "bearer" and bearer.realm == 'r"q'
    assert bearer.service == "svc" and bearer.scope == "s"

    found = bearer_challenge(['Basic realm="x"', "Negotiate abc==", 'bearer realm="y"'])
    assert found is not None and found.realm == "y"
    assert bearer_challenge(['Bearer service="no realm"']) is None
    assert bearer_challenge([]) is None
    for junk in ['"', "=", ",,,", 'Bearer realm="unterminated', "\x00\x01", "Bearer ="]:
        parse_challenges([junk])  # never raises
    assert bearer_challenge(['Bearer realm="unterminated']) is not None


# -- real programs: notary-server with token auth, the threaded token server ---------------------


@pytest.fixture(scope="module")
def notary_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TokenServer]]:
    workdir = tmp_path_factory.mktemp("notary-auth")
    with TokenServer(USERS, service=SERVICE, issuer="vouch-client-interop") as tokens:
        bundle = tokens.authority.write_bundle(workdir / "root-ca.pem")
        auth = {
            "type": "token",
            "options": {
                "realm": tokens.realm,
                "service": SERVICE,
                "issuer": tokens.issuer,
                "rootcertbundle": str(bundle),
            },
        }
        with NotaryServer(workdir / "server", extra_config={"auth": auth}) as server:
            yield server.url, tokens


@pytest.mark.interop
async def test_real_notary_server_with_token_auth(
    notary_with_auth: tuple[str, TokenServer],
) -> None:
    url, tokens = notary_with_auth
    gun = f"example.com/alice/{secrets.token_hex(4)}"
    alice = TokenAuth(environ={"NOTARY_AUTH": notary_auth("alice", "alice-pw")})
    async with Remote(url, auth=alice) as r:
        assert await r.ping() is True
        pub = await initialised(r, gun)
        ts = await verify(r, gun)
        assert set(ts.all_targets()) == {"v1"}
        assert pub.gun == gun
    mine = [q for q in tokens.requests if gun in " ".join(q.scopes)]
    # get_key and publish share one push,pull token; reads go anonymous, then alice.
    assert [(q.user, q.scopes, q.status) for q in mine] == [
        ("alice", (f"repository:{gun}:push,pull",), 200),
        (None, (f"repository:{gun}:pull",), 200),
        ("alice", (f"repository:{gun}:pull",), 200),
    ]

    anonymous = TokenAuth(environ={}, use_docker_config=False)
    async with Remote(url, auth=anonymous) as r:
        with pytest.raises(Unauthorized) as info:
            await r.get_metadata(gun, "root.json", MAX_ROOT_SIZE)
    assert info.value.error == "insufficient_scope"

    wrong = TokenAuth(environ={"NOTARY_AUTH": notary_auth("alice", "wrong")})
    async with Remote(url, auth=wrong) as r:
        with pytest.raises(Unauthorized, match="refused the credentials"):
            await r.get_key(gun, "timestamp")
