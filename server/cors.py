"""Cross-origin requests (CORS) on the HTTP port. Neither Triton nor KServe has a setting for
them; MLServer's `cors_settings` turn them on (server/mlserver_server_settings.py reads them).
Starlette's CORSMiddleware then answers preflight requests and adds the CORS headers to every
answer of the HTTP port."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """What may cross origins; MLServer's CORSSettings defaults."""

    allow_origins: tuple[str, ...] = ()  # ("*",): any origin
    allow_origin_regex: str | None = None
    allow_credentials: bool = False
    allow_methods: tuple[str, ...] = ("GET",)
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int = 600  # seconds a browser may keep a preflight's answer

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return CORSMiddleware(
            app,
            allow_origins=self.allow_origins,
            allow_origin_regex=self.allow_origin_regex,
            allow_credentials=self.allow_credentials,
            allow_methods=self.allow_methods,
            allow_headers=self.allow_headers,
            expose_headers=self.expose_headers,
            max_age=self.max_age,
        )
