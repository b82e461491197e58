"""Registry token auth end to end, with real programs on both sides of vouch.

``tests/test_auth.py`` checks the verifier against hand-made tokens. Here
nothing is hand-made on the client side: the real notary CLI (Debian's 0.7.0)
pings ``vouch server``, reads the ``WWW-Authenticate`` challenge, fetches
tokens from a real token server (:mod:`token_server`, which signs ES256 JWTs
with an x5c chain up to the root CA that vouch trusts) and retries with them.
If vouch's challenge, its scope names or its verdicts were off by anything the
CLI cares about, a command here would fail or succeed when it should not.

Users of the token server:

* alice: push, pull on ``example.com/alice/*``;
* bob: pull on ``example.com/*``;
* carol: push, pull on ``example.com/public/*``;
* admin: ``*`` on ``example.com/*`` and ``registry:catalog:*``;
* anonymous: pull on ``example.com/public/*``.

Everything runs twice: with vouch's own config (``auth.realm`` …) and with
notary-server's config file as is (``auth.options``, ``server.http_addr``,
``storage.backend sqlite3``, ``trust_service local``, ``logging.level``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from notary_harness import NOTARY_BIN, NotaryCLI, free_port
from token_server import (
    ANONYMOUS,
    TokenAuthority,
    TokenRequest,
    TokenServer,
    User,
    notary_auth,
    rule,
)
from vouch_harness import VOUCH, VouchServer

pytestmark = pytest.mark.interop

ALICE_GUN = "example.com/alice/app"
PUBLIC_GUN = "example.com/public/lib"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "admin": "admin-pw"}
USERS = {
    "alice": User(PASSWORDS["alice"], (rule("example.com/alice/*", "push", "pull"),)),
    "bob": User(PASSWORDS["bob"], (rule("example.com/*", "pull"),)),
    "carol": User(PASSWORDS["carol"], (rule("example.com/public/*", "push", "pull"),)),
    "admin": User(
        PASSWORDS["admin"],
        (rule("example.com/*", "*", "push", "pull"), rule("catalog", "*", type="registry")),
    ),
    ANONYMOUS: User("", (rule("example.com/public/*", "pull"),)),
}
NOT_AUTHORIZED = "you are not authorized to perform this operation: server returned 401"


class NotaryConfigVouch(VouchServer):
    """``vouch server --config notary-server.json`` and nothing else on the command line.

    :class:`VouchServer` passes ``--listen``/``--data-dir``/``--plain-http``,
    which would override the very settings this test wants vouch to take from
    notary's file (``server.http_addr``; plain HTTP because no TLS is set).
    """

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__(workdir)
        self.config = config

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config["server"] = {"http_addr": f"127.0.0.1:{self.port}"}
        path = self.workdir / "notary-server.json"
        path.write_text(json.dumps(self.config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOUCH_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [VOUCH, "server", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,  # the default data dir (.vouch) lands here
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vouch server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/_notary_server/health", timeout=2).status_code == 200:
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"vouch server did not become healthy:\n{self.log()}")


@dataclass
class Stack:
    """A token server, vouch with token auth, and what the set-up publishes did."""

    tokens: TokenServer
    server: VouchServer
    workdir: Path
    config_format: str
    db_file: Path | None = None
    setup: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    setup_token_requests: list[TokenRequest] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def trust_dir(self, name: str) -> Path:
        return self.workdir / "clients" / name / "trust"

    def cli(
        self, user: str | None, trust: str | None = None, password: str | None = None
    ) -> NotaryCLI:
        """The CLI with ``user``'s credentials (``None``: anonymous) on a trust dir,
        by default the user's own."""
        env: dict[str, str] = {}
        if user is not None:
            env["NOTARY_AUTH"] = notary_auth(user, password or PASSWORDS[user])
        return NotaryCLI(
            self.url, self.trust_dir(trust or user or "anonymous"), env=env, timeout=30
        )

    def file(self, name: str, content: bytes) -> Path:
        path = self.workdir / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def token(self, user: str, *scopes: str) -> dict[str, str]:
        """A bearer header from the token server's HTTP endpoint, as a client gets it."""
        params: dict[str, Any] = {"service": self.tokens.service, "scope": list(scopes)}
        auth = None
        if user != ANONYMOUS:
            params["account"] = user
            auth = (user, PASSWORDS[user])
        resp = httpx.get(self.tokens.realm, params=params, auth=auth, timeout=10)
        resp.raise_for_status()
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}

    def log_mark(self) -> int:
        return len(self.server.log())

    def log_since(self, mark: int) -> str:
        """The server log written after :meth:`log_mark`: tests share one server, and the
        same refusal line may come from another test's client."""
        return self.server.log()[mark:]

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers, timeout=10)


def output(result: subprocess.CompletedProcess[str]) -> str:
    """Both streams: the CLI prints ``* fatal: …`` to stdout and its log lines to stderr."""
    return result.stdout + result.stderr


def publish_one(stack: Stack, user: str, gun: str, target: str) -> None:
    """init + add + publish with ``user``'s own trust dir; failures raise with the output."""
    cli = stack.cli(user)
    stack.setup[f"{user} init {gun}"] = cli.run("init", gun)
    stack.setup[f"{user} add {gun}"] = cli.run(
        "add", gun, target, stack.file(f"{target}.txt", f"{gun} {target}\n".encode())
    )
    stack.setup[f"{user} publish {gun}"] = cli.run("publish", gun)


def _require_notary_cli() -> None:
    # Fail, never skip: a skipped interop test looks exactly like a passing one.
    if not os.access(NOTARY_BIN, os.X_OK):
        pytest.fail(
            f"missing {NOTARY_BIN}: install the Debian package 'notary' to run these tests",
            pytrace=False,
        )


@pytest.fixture(scope="module", params=["vouch-config", "notary-config"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    _require_notary_cli()
    config_format: str = request.param
    workdir = tmp_path_factory.mktemp(f"token-e2e-{config_format}")
    with TokenServer(USERS) as tokens:
        bundle = tokens.authority.write_bundle(workdir / "token-root.crt")
        server: VouchServer
        db_file = None
        if config_format == "vouch-config":
            auth = {
                "type": "token",
                "realm": tokens.realm,
                "service": tokens.service,
                "issuer": tokens.issuer,
                "rootcertbundle": str(bundle),
            }
            config = workdir / "vouch.json"
            config.write_text(json.dumps({"auth": auth}))
            server = VouchServer(
                workdir / "server",
                env={"VOUCH_LOG_LEVEL": "info"},  # the refusals are logged at info
                extra_args=("--config", str(config)),
            )
        else:
            db_file = workdir / "server" / "notary.db"
            server = NotaryConfigVouch(
                workdir / "server",
                {
                    "trust_service": {"type": "local"},
                    "storage": {"backend": "sqlite3", "db_url": str(db_file)},
                    "logging": {"level": "info"},
                    "auth": {
                        "type": "token",
                        "options": {
                            "realm": tokens.realm,
                            "service": tokens.service,
                            "issuer": tokens.issuer,
                            "rootcertbundle": str(bundle),
                        },
                    },
                },
            )
        with server:
            stack = Stack(tokens, server, workdir, config_format, db_file)
            publish_one(stack, "alice", ALICE_GUN, "v1")
            publish_one(stack, "carol", PUBLIC_GUN, "lib-1.0")
            stack.setup_token_requests = list(tokens.requests)
            yield stack


# -- the real notary CLI --------------------------------------------------------------------


def test_alice_inits_adds_publishes_and_lists(stack: Stack) -> None:
    assert "Successfully published changes" in stack.setup[f"alice publish {ALICE_GUN}"].stdout
    listing = stack.cli("alice").run("list", ALICE_GUN).stdout
    assert "v1" in listing.split()
    # The writes asked for push,pull with alice's credentials, and got exactly that.
    writes = [r for r in stack.setup_token_requests if r.user == "alice"]
    assert writes
    for r in writes:
        assert r.account == "alice"
        assert r.scopes == (f"repository:{ALICE_GUN}:push,pull",)
        assert r.granted == (
            {"type": "repository", "name": ALICE_GUN, "actions": ["push", "pull"]},
        )
    # Really stored: the published targets file is there for anyone with pull.
    resp = stack.get(
        f"/v2/{ALICE_GUN}/_trust/tuf/targets.json",
        stack.token("bob", f"repository:{ALICE_GUN}:pull"),
    )
    assert resp.status_code == 200
    assert "v1" in json.loads(resp.content)["signed"]["targets"]


def test_bob_reads_but_cannot_publish(stack: Stack) -> None:
    before = len(stack.tokens.requests)
    listing = stack.cli("bob").run("list", ALICE_GUN).stdout
    assert "v1" in listing.split()
    # The CLI reads anonymously first, and only after vouch's 401 uses bob's credentials.
    flow = [(r.user, r.scopes) for r in stack.tokens.requests[before:]]
    pull = (f"repository:{ALICE_GUN}:pull",)
    assert flow == [(None, pull), ("bob", pull)]

    # bob even has alice's keys (a copy of her trust dir), so only the server can stop him.
    shutil.copytree(stack.trust_dir("alice"), stack.trust_dir("bob-with-keys"))
    bob = stack.cli("bob", trust="bob-with-keys")
    bob.run("add", ALICE_GUN, "evil", stack.file("evil.txt", b"from bob\n"))
    mark = stack.log_mark()
    result = bob.run("publish", ALICE_GUN, check=False)
    assert result.returncode != 0
    assert NOT_AUTHORIZED in output(result)
    assert (
        f"refused POST /v2/{ALICE_GUN}/_trust/tuf/: "
        f"token for 'bob' lacks repository:{ALICE_GUN}:push" in stack.log_since(mark)
    )
    targets = stack.get(
        f"/v2/{ALICE_GUN}/_trust/tuf/targets.json",
        stack.token("bob", f"repository:{ALICE_GUN}:pull"),
    )
    assert "evil" not in json.loads(targets.content)["signed"]["targets"]
    # The same refusal on the wire: bob asked for push,pull and the token server gave pull.
    resp = httpx.post(
        f"{stack.url}/v2/{ALICE_GUN}/_trust/tuf/",
        headers=stack.token("bob", f"repository:{ALICE_GUN}:push,pull"),
        timeout=10,
    )
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == _challenge(
        stack, f"repository:{ALICE_GUN}:push,pull", "insufficient_scope"
    )
    assert resp.content == _body("repository", ALICE_GUN, "push", "pull")


def test_anonymous_reads_public_only(stack: Stack) -> None:
    assert "Successfully published" in stack.setup[f"carol publish {PUBLIC_GUN}"].stdout
    anonymous = stack.cli(None)
    assert "lib-1.0" in anonymous.run("list", PUBLIC_GUN).stdout.split()

    mark, before = stack.log_mark(), len(stack.tokens.requests)
    refused = anonymous.run("list", ALICE_GUN, check=False)
    assert refused.returncode != 0
    assert NOT_AUTHORIZED in output(refused)
    # Without NOTARY_AUTH the CLI falls back to prompting; stdin is /dev/null here.
    assert "Enter username:" in refused.stdout
    assert (
        f"refused GET /v2/{ALICE_GUN}/_trust/tuf/root.json: "
        f"token for '' lacks repository:{ALICE_GUN}:pull" in stack.log_since(mark)
    )
    # The token server handed out (empty) anonymous tokens and never saw credentials.
    flow = stack.tokens.requests[before:]
    assert flow
    assert all((r.user, r.account, r.status, r.granted) == (None, None, 200, ()) for r in flow)


def test_wrong_password_fails(stack: Stack) -> None:
    before = len(stack.tokens.requests)
    fresh = stack.cli("alice", trust="alice-wrong-password", password="wrong")
    listing = fresh.run("list", ALICE_GUN, check=False)
    assert listing.returncode != 0
    assert "unauthorized: bad login" in output(listing)
    publish = stack.cli("alice", password="wrong").run("publish", ALICE_GUN, check=False)
    assert publish.returncode != 0
    assert "unauthorized: bad login" in output(publish)
    refused = [r for r in stack.tokens.requests[before:] if r.user == "alice"]
    assert [r.status for r in refused] == [401, 401]

    # Surprise: once a read has cached the timestamp (publish does not: the server signs
    # it), a read whose login fails still "works" (exit 0): the CLI warns and lists the
    # cached, possibly stale, targets instead.
    stack.cli("alice").run("list", ALICE_GUN)
    cached = stack.cli("alice", password="wrong").run("list", ALICE_GUN, check=False)
    assert cached.returncode == 0
    assert "using cached timestamp" in output(cached)


def test_delete_remote_needs_star(stack: Stack) -> None:
    gun = "example.com/alice/doomed"
    publish_one(stack, "alice", gun, "doomed-1")
    root = f"/v2/{gun}/_trust/tuf/root.json"
    pull = stack.token("bob", f"repository:{gun}:pull")

    mark = stack.log_mark()
    alice = stack.cli("alice").run("delete", gun, "--remote", check=False)
    assert alice.returncode != 0
    assert NOT_AUTHORIZED in output(alice)
    assert f"refused DELETE /v2/{gun}/_trust/tuf/: token for 'alice' lacks repository:{gun}:*" in (
        stack.log_since(mark)
    )
    assert stack.get(root, pull).status_code == 200  # still there
    # The CLI deleted alice's local copy before it asked the server (notary 0.7 quirk).
    assert not (stack.trust_dir("alice") / "tuf" / gun / "metadata").exists()

    admin = stack.cli("admin").run("delete", gun, "--remote")
    assert "Successfully deleted local and remote trust data" in admin.stdout
    assert stack.get(root, pull).status_code == 404
    # alice's admin-less scope request was answered with an empty grant, not an error.
    star = [r for r in stack.tokens.requests if r.scopes == (f"repository:{gun}:*",)]
    assert [(r.user, r.status, bool(r.granted)) for r in star] == [
        ("alice", 200, False),
        ("admin", 200, True),
    ]


def test_remote_key_rotation_needs_star(stack: Stack) -> None:
    gun = "example.com/alice/rotated"
    publish_one(stack, "alice", gun, "r-1")
    mark = stack.log_mark()
    for role in ("snapshot", "timestamp"):
        refused = stack.cli("alice").run("key", "rotate", gun, role, "-r", check=False)
        assert refused.returncode != 0, role
        assert f"unable to rotate remote key: {NOT_AUTHORIZED}" in output(refused), role
        # An admin holding alice's root key (her trust dir) may.
        rotated = stack.cli("admin", trust="alice").run("key", "rotate", gun, role, "-r")
        assert f"Successfully rotated {role} key" in rotated.stdout, role
    log = stack.log_since(mark)
    for role in ("snapshot", "timestamp"):
        assert f"refused POST /v2/{gun}/_trust/tuf/{role}.key: token for 'alice' lacks" in log


def test_publish_with_nothing_to_upload_after_server_snapshot(stack: Stack) -> None:
    """After ``key rotate snapshot -r`` a ``publish`` with no changes sends a multipart
    body with no parts at all; notary-server answers 200 (new snapshot and timestamp)."""
    gun = "example.com/alice/quiet"
    publish_one(stack, "alice", gun, "q-1")
    stack.cli("admin", trust="alice").run("key", "rotate", gun, "snapshot", "-r")
    result = stack.cli("alice").run("publish", gun, check=False)
    assert result.returncode == 0, output(result)


def test_notary_config_storage_is_used(stack: Stack) -> None:
    """The publishes landed where the config said: notary's ``storage.db_url``, or the
    default SQLite file in vouch's data dir."""
    if stack.db_file is None:
        assert stack.config_format == "vouch-config"
        assert (stack.server.workdir / "data" / "vouch.db").is_file()
    else:
        assert stack.db_file.is_file()
        assert stack.db_file.stat().st_size > 0


# -- raw HTTP against the same server ------------------------------------------------------


def _challenge(stack: Stack, scope: str, error: str | None = None) -> str:
    header = f'Bearer realm="{stack.tokens.realm}",service="notary-server",scope="{scope}"'
    return header + (f',error="{error}"' if error else "")


def _body(type_: str, name: str, *actions: str) -> bytes:
    detail = ",".join(
        f'{{"Type":"{type_}","Class":"","Name":"{name}","Action":"{a}"}}' for a in actions
    )
    return (
        b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":['
        + detail.encode()
        + b"]}]}\n"
    )


@pytest.mark.parametrize(
    ("method", "path", "actions"),
    [
        ("GET", f"/v2/{ALICE_GUN}/_trust/tuf/root.json", ("pull",)),
        ("GET", f"/v2/{ALICE_GUN}/_trust/tuf/2.targets.json", ("pull",)),
        ("GET", f"/v2/{ALICE_GUN}/_trust/changefeed?records=10", ("pull",)),
        ("POST", f"/v2/{ALICE_GUN}/_trust/tuf/", ("push", "pull")),
        ("GET", f"/v2/{ALICE_GUN}/_trust/tuf/timestamp.key", ("push", "pull")),
        ("POST", f"/v2/{ALICE_GUN}/_trust/tuf/snapshot.key", ("*",)),
        ("DELETE", f"/v2/{ALICE_GUN}/_trust/tuf/", ("*",)),
    ],
)
def test_no_token_gets_exact_challenge(
    stack: Stack, method: str, path: str, actions: tuple[str, ...]
) -> None:
    resp = httpx.request(method, stack.url + path, timeout=10)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == _challenge(
        stack, f"repository:{ALICE_GUN}:{','.join(actions)}"
    )
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    assert resp.content == _body("repository", ALICE_GUN, *actions)


def test_token_for_another_gun_is_insufficient_scope(stack: Stack) -> None:
    other = stack.token("alice", "repository:example.com/alice/other:push,pull")
    resp = stack.get(f"/v2/{ALICE_GUN}/_trust/tuf/root.json", other)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == _challenge(
        stack, f"repository:{ALICE_GUN}:pull", "insufficient_scope"
    )
    assert resp.content == _body("repository", ALICE_GUN, "pull")
    # The positive control: the same request with the right token.
    right = stack.token("alice", f"repository:{ALICE_GUN}:pull")
    assert stack.get(f"/v2/{ALICE_GUN}/_trust/tuf/root.json", right).status_code == 200


def _untrusted_tokens(tokens: TokenServer) -> dict[str, str]:
    access = [{"type": "repository", "name": ALICE_GUN, "actions": ["pull"]}]
    impostor = TokenServer(
        USERS, service=tokens.service, issuer=tokens.issuer, authority=TokenAuthority.create()
    )
    return {
        # 120 s past exp: beyond the 60 s leeway.
        "expired": tokens.issue("alice", access, lifetime=-120),
        "wrong audience": tokens.issue("alice", access, audience="registry"),
        "other CA": impostor.issue("alice", access),
    }


@pytest.mark.parametrize("case", ["expired", "wrong audience", "other CA"])
def test_untrusted_token_is_invalid_token(stack: Stack, case: str) -> None:
    token = _untrusted_tokens(stack.tokens)[case]
    resp = stack.get(f"/v2/{ALICE_GUN}/_trust/tuf/root.json", {"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == _challenge(
        stack, f"repository:{ALICE_GUN}:pull", "invalid_token"
    )
    assert resp.content == _body("repository", ALICE_GUN, "pull")


@pytest.mark.parametrize("path", ["/v2/", "/v2/_trust/changefeed?records=10", "/v2/nothing-here"])
def test_catalog_routes_need_registry_catalog_star(stack: Stack, path: str) -> None:
    anonymous = stack.get(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == _challenge(stack, "registry:catalog:*")
    assert anonymous.content == _body("registry", "catalog", "*")
    # Even a `*` on a repository is no catalog grant.
    repo_star = stack.get(path, stack.token("admin", f"repository:{ALICE_GUN}:*"))
    assert repo_star.status_code == 401
    assert repo_star.headers["www-authenticate"].endswith(',error="insufficient_scope"')
    catalog = stack.get(path, stack.token("admin", "registry:catalog:*"))
    assert catalog.status_code != 401
    if path != "/v2/nothing-here":
        assert catalog.status_code == 200
    else:
        assert catalog.status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("HEAD", f"/v2/{ALICE_GUN}/_trust/tuf/root.json"),
        ("GET", f"/v2/{ALICE_GUN}/_trust/tuf/"),
        ("GET", f"/v2/{ALICE_GUN}/_trust/tuf/root.key"),
        ("DELETE", f"/v2/{ALICE_GUN}/_trust/tuf/root.json"),
        ("POST", f"/v2/{ALICE_GUN}/_trust/changefeed"),
    ],
)
def test_unrouted_requests_under_a_gun_need_catalog(stack: Stack, method: str, path: str) -> None:
    resp = httpx.request(method, stack.url + path, timeout=10)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == _challenge(stack, "registry:catalog:*")


@pytest.mark.parametrize("path", ["/_notary_server/health", "/metrics"])
def test_health_and_metrics_need_no_token(stack: Stack, path: str) -> None:
    resp = stack.get(path)
    assert resp.status_code == 200
    assert "www-authenticate" not in resp.headers


# -- the admission engine's logins ----------------------------------------------------------


def _regcred(user: str, password: str) -> dict[str, Any]:
    import base64

    auths = {"example.com": {"username": user, "password": password}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "regcred", "namespace": "team"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {
            ".dockerconfigjson": base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
        },
    }


def test_admission_policy_credentials_secret_reads_private_trust_data(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vouch's per-policy ``credentialsSecret`` logs in to the trust server's
    token service, and wins over the pod's pull secrets. The webhook process's
    own credentials (``NOTARY_AUTH``, Docker config) are never lent to a pod."""
    import asyncio
    import base64

    import yaml

    from vouch.admission.engine import Engine
    from vouch.admission.policy import load_policies
    from vouch.client.auth import Credentials

    def policies(secret: dict[str, Any] | None) -> str:
        trust: dict[str, Any] = {"enabled": True, "trustServer": stack.url}
        if secret is not None:
            trust["credentialsSecret"] = "regcred"
        policy = {
            "apiVersion": "policy.vouch.dev/v1",
            "kind": "ImagePolicy",
            "metadata": {"name": "private", "namespace": "team"},
            "spec": {"repositories": [{"name": "example.com/*", "policy": {"trust": trust}}]},
        }
        return yaml.safe_dump_all([policy] + ([secret] if secret is not None else []))

    image = f"{ALICE_GUN}:v1"
    n = iter(range(100))

    async def decide(text: str, pod_login: tuple[str, str] | None = None) -> tuple[bool, list[str]]:
        engine = Engine(load_policies(text), cache_dir=tmp_path / f"e{next(n)}", cache_ttl=0)
        creds = {"example.com": Credentials(*pod_login, source="pod")} if pod_login else {}
        try:
            d = await engine.check(image, "team", creds)
        finally:
            await engine.aclose()
        return d.allowed, d.reasons

    async def go() -> None:
        ok, why = await decide(policies(_regcred("alice", PASSWORDS["alice"])))
        assert ok, why
        denied, why = await decide(policies(_regcred("alice", "wrong")))
        assert not denied, why
        # no policy login: the pod's pull secret is used, else anonymous
        ok, why = await decide(policies(None), ("alice", PASSWORDS["alice"]))
        assert ok, why
        anonymous, why = await decide(policies(None))
        assert not anonymous, why
        own = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
        monkeypatch.setenv("NOTARY_AUTH", own)
        borrowed, why = await decide(policies(None))
        assert not borrowed, "the webhook's own NOTARY_AUTH must not log a pod in"
        monkeypatch.delenv("NOTARY_AUTH")
        # the policy's own login wins over the pod's
        ok, why = await decide(policies(_regcred("alice", PASSWORDS["alice"])), ("alice", "bad"))
        assert ok, why
        wins, why = await decide(
            policies(_regcred("alice", "wrong")), ("alice", PASSWORDS["alice"])
        )
        assert not wins, why

    asyncio.run(go())


def test_admission_webhook_logs_in_with_the_pods_pull_secrets(stack: Stack, tmp_path: Path) -> None:
    """The webhook reads the pod's imagePullSecrets (else its service account's)
    from the API server and offers them to the trust server's token service."""
    import asyncio
    import base64

    from kube_apiserver import KubeAPIServer
    from vouch.admission.engine import Engine
    from vouch.admission.kube import KubeClient
    from vouch.admission.policy import load_policies
    from vouch.admission.webhook import Reviewer

    policy = f"""
apiVersion: portieris.cloud.ibm.com/v1
kind: ClusterImagePolicy
metadata: {{name: private}}
spec:
  repositories:
  - name: "example.com/*"
    policy: {{trust: {{enabled: true, trustServer: "{stack.url}"}}}}
"""

    def pull_secret(password: str) -> dict[str, bytes]:
        login = base64.b64encode(f"alice:{password}".encode()).decode()
        return {
            ".dockerconfigjson": json.dumps({"auths": {"example.com": {"auth": login}}}).encode()
        }

    def pod(pull_secrets: list[str], account: str = "default") -> dict[str, Any]:
        spec: dict[str, Any] = {
            "serviceAccountName": account,
            "containers": [{"name": "c", "image": f"{ALICE_GUN}:v1"}],
        }
        if pull_secrets:
            spec["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "team",
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "p", "namespace": "team"},
                    "spec": spec,
                },
            },
        }

    with KubeAPIServer(tmp_path) as api:
        api.secret("team", "good", pull_secret(PASSWORDS["alice"]))
        api.secret("team", "bad", pull_secret("wrong"))
        for account, secrets in (("builder", ["good"]), ("default", [])):
            api.put(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": account, "namespace": "team"},
                    "imagePullSecrets": [{"name": s} for s in secrets],
                }
            )
        token = tmp_path / "token"
        token.write_text(api.token)
        n = iter(range(100))

        async def allowed(review: dict[str, Any]) -> bool:
            kube = KubeClient.from_files(api.url, token, api.tls.ca_cert)
            engine = Engine(load_policies(policy), cache_dir=tmp_path / f"e{next(n)}", cache_ttl=0)
            try:
                result = await Reviewer(engine, owners=kube, secrets=kube).review(review)
            finally:
                await engine.aclose()
                await kube.aclose()
            return result.allowed

        async def go() -> None:
            assert await allowed(pod(["good"]))
            assert not await allowed(pod(["bad"]))
            assert not await allowed(pod([]))  # the default account has none: anonymous
            assert await allowed(pod([], account="builder"))  # the account's pull secret
            assert not await allowed(pod(["bad"], account="builder"))  # the pod's own win
            assert await allowed(pod(["missing", "good"]))  # a missing one is skipped

        asyncio.run(go())
