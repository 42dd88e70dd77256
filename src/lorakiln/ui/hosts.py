"""The `Host` header check that stops DNS rebinding.

A web page on ``evil.example`` can make the browser resolve its own name to 127.0.0.1 and then
talk to a local server as a "same-origin" page; the one thing it cannot fake is the ``Host``
header, which still says ``evil.example``. So, as Jupyter Server does for local servers
(its ``allow_remote_access`` / ``local_hostnames`` settings) and as starlette's
``TrustedHostMiddleware`` implements it, a request is answered only when its ``Host`` is one
of the names this server is meant to be reached by: the localhost names, the bound address,
and the names given with ``--allowed-host``. When bound to every interface (``--listen``)
an IP-address ``Host`` is accepted too (Vite's ``server.allowedHosts`` rule): a rebinding
attack needs a name the attacker controls, never an address, and this machine's addresses
are not known in advance. Everything else gets HTTP 400 before gradio sees the request.

Starlette's middleware splits ``Host`` on the first ``:`` and so mishandles IPv6 literals
(``[::1]:7860``); this one parses them, and applies to websocket connections as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
ALL_INTERFACES = ("0.0.0.0", "::", "")

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]


def host_name(header: str) -> str:
    """The name of a ``Host`` header value, without the port and brackets, lower case."""
    value = header.strip().lower()
    if value.startswith("["):  # [v6]:port
        return value[1:value.find("]")] if "]" in value else ""
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` names this server answers."""

    def __init__(self, bound: str, allowed: Iterable[str] = ()) -> None:
        self.any_ip = bound in ALL_INTERFACES
        names = {*LOCAL_NAMES, *(host_name(n) for n in allowed if n.strip())}
        if not self.any_ip:
            names.add(host_name(bound) if not _is_ip(bound) else bound.lower())
        self.names = frozenset(names)

    def allows(self, header: str | None) -> bool:
        name = host_name(header or "")
        if not name:
            return False
        if name in self.names or name.endswith(".localhost"):  # RFC 6761: *.localhost is loopback
            return True
        return self.any_ip and _is_ip(name)


class HostCheckMiddleware:
    """ASGI middleware: refuse (400) any HTTP or websocket request whose ``Host`` the policy rejects."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Callable[..., Awaitable[Any]],
                       send: Callable[..., Awaitable[Any]]) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        if self.policy.allows(header):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = (f"Invalid host header {header!r}: this lorakiln UI answers only "
                f"{', '.join(sorted(self.policy.names))}; start it with --allowed-host NAME to add a name\n").encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def middleware(policy: HostPolicy) -> list[Any]:
    """The ``middleware`` list for gradio's ``launch(app_kwargs=…)`` (FastAPI's constructor)."""
    from starlette.middleware import Middleware

    return [Middleware(HostCheckMiddleware, policy=policy)]
