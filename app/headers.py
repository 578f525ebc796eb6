"""Security headers: no framing of the web page or of `/docs`, a CSP that fits the page, and `nosniff` everywhere.

The page loads only its own script, style sheet and images, draws previews from `data:` and `blob:` URLs,
and talks only to this API. `/docs` is Swagger UI from the package's own files (app/routes/page.py), started
by an inline script that the page's CSP would block; its policy says only that no other site may frame it, since
its Authorize dialog holds the bearer key. Every response, JSON included, says `nosniff`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self' blob:",  # the page reads back its own result blobs (download, checks)
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
NOSNIFF = (b"x-content-type-options", b"nosniff")
PAGE_HEADERS = [
    (b"content-security-policy", PAGE_CSP.encode()),
    (b"x-frame-options", b"DENY"),
    NOSNIFF,
    (b"referrer-policy", b"no-referrer"),
]
DOCS_HEADERS = [
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    NOSNIFF,
    (b"referrer-policy", b"no-referrer"),
]
DOCS_PATHS = ("/docs", "/redoc")


def headers_for(path: str) -> list[tuple[bytes, bytes]]:
    if path == "/" or path.startswith("/static/"):
        return PAGE_HEADERS
    if path in DOCS_PATHS:
        return DOCS_HEADERS
    return [NOSNIFF]


class SecurityHeaders:
    """Adds the headers of `headers_for(path)` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = headers_for(scope["path"])

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
