"""Registry token auth wired into the HTTP app (see :mod:`vouch.server.auth`)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from vouch.server.auth import Challenge, TokenAuthConfig, TokenAuthorizer, required_access
from vouch.server.settings import AuthSettings

log = logging.getLogger("vouch.server.auth")


class TokenAuthMiddleware:
    """:class:`~vouch.server.app.Authorizer` backed by a :class:`TokenAuthorizer`."""

    def __init__(self, authorizer: TokenAuthorizer) -> None:
        self.authorizer = authorizer

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> TokenAuthMiddleware:
        if settings.rootcertbundle is None:
            raise ValueError("token auth needs auth.rootcertbundle")
        config = TokenAuthConfig.from_options(
            {
                "realm": settings.realm,
                "service": settings.service,
                "issuer": settings.issuer,
                "rootcertbundle": str(settings.rootcertbundle),
                "autoredirect": settings.autoredirect,
            }
        )
        return cls(TokenAuthorizer(config))

    def check(self, request: Request, kind: str, gun: str | None) -> Response | None:
        required = required_access(request.method, kind, gun)
        result = self.authorizer.authorize(
            request.headers.get("authorization"), required, host=request.headers.get("host")
        )
        if isinstance(result, Challenge):
            if result.error:
                log.info("refused %s %s: %s", request.method, request.url.path, result.reason)
            return Response(result.body, status_code=result.status, headers=result.headers)
        return None
