"""``backbeat serve``: the report's pages served live from the prefix and the cache.

Read-only: GET and HEAD only (anything else is 405), on 127.0.0.1 by default; every request
reads the prefix and the cache afresh, so new runs and sweeps appear on reload.  Besides the
pages of :mod:`backbeat.reporting.pages` (rendered with ``live`` on), it answers
``api/progress/<slug>.json`` (a run in progress of one experiment, from its live progress
file, and the time of its last record) and ``api/runs.json`` (every run in progress), which
the pages poll every second or two to recolour the graph and reload when a run ends.  Plots
are rendered on first view of an experiment page, again when a newer run is recorded, into a
temporary folder removed on exit.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import shutil
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from backbeat.core import jsonio
from backbeat.core.errors import BackbeatError
from backbeat.declarations.prefix import Prefix
from backbeat.reporting import engine, pages, patterns, site

_PAGE = re.compile(r"^/(exp|compare)-([A-Za-z0-9_.-]+)\.html$")
_PROGRESS = re.compile(r"^/api/progress/([A-Za-z0-9_.-]+)\.json$")
_FILE = re.compile(r"^/(static|plots)/([A-Za-z0-9_.-]+)$")


class ReportServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str] | None,
                 host: str = "127.0.0.1", port: int = 8000, quiet: bool = True):
        self.prefix, self.cache, self.names, self.quiet = Path(prefix), Path(cache), names, quiet
        self.plot_dir = Path(tempfile.mkdtemp(prefix="backbeat-serve-"))
        self.plots: dict[str, tuple[str | None, list[dict]]] = {}
        self.plot_lock = threading.Lock()
        if names:  # bad names fail now, not on the first request
            patterns.expand(Prefix(prefix), names)
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/" if isinstance(host, str) else f"http://{host.decode()}:{port}/"

    def context(self) -> pages.Context:
        pfx = Prefix(self.prefix)
        names = patterns.expand(pfx, self.names) if self.names else pfx.list("experiment")
        return pages.Context(self.prefix, self.cache, names, live=True)

    def plots_of(self, name: str) -> list[dict]:
        """The experiment's plot entries, rendered again when a newer run was recorded."""
        records = engine.history(self.cache, name)
        stamp = records[0].get("created") if records else None
        with self.plot_lock:
            known = self.plots.get(name)
            if known is None or known[0] != stamp:
                entries = site.plot_entries(self.prefix, self.cache, [name], self.plot_dir) if stamp else {}
                self.plots[name] = (stamp, entries.get(name, []))
            return self.plots[name][1]

    def server_close(self) -> None:
        super().server_close()
        shutil.rmtree(self.plot_dir, ignore_errors=True)


class Handler(BaseHTTPRequestHandler):
    server: ReportServer
    server_version = "backbeat-serve"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str, head: bool = False) -> None:
        self._send(status, f"{status.value} {status.phrase}: {message}\n".encode(), "text/plain; charset=utf-8", head)

    def _route(self, path: str) -> tuple[bytes, str] | None:
        srv = self.server
        html = "text/html; charset=utf-8"
        if path in ("/", "/index.html"):
            return pages.index(srv.context()).encode(), html
        if path == "/compare.html":
            return pages.compare(srv.context()).encode(), html
        if path == "/api/runs.json":
            return jsonio.dumps(pages.running(srv.context())).encode(), "application/json"
        m = _FILE.match(path)
        if m:
            folder = pages.STATIC if m.group(1) == "static" else srv.plot_dir
            file = folder / m.group(2)
            if not file.is_file():
                return None
            return file.read_bytes(), mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        ctx = srv.context()
        by_slug = {pages.slug(n): n for n in ctx.names}
        m = _PROGRESS.match(path)
        if m and m.group(1) in by_slug:
            return jsonio.dumps(pages.progress(ctx, by_slug[m.group(1)])).encode(), "application/json"
        m = _PAGE.match(path)
        if m and m.group(1) == "exp" and m.group(2) in by_slug:
            name = by_slug[m.group(2)]
            ctx.plots[name] = srv.plots_of(name)
            return pages.experiment(ctx, name).encode(), html
        if m and m.group(1) == "compare":
            toolchains = {pages.slug(tc): tc for tc in ctx.toolchains()}
            if m.group(2) in toolchains:
                return pages.compare(ctx, toolchains[m.group(2)]).encode(), html
        return None

    def _get(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        try:
            found = self._route(path)
        except BackbeatError as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc), head)
            return
        if found is None:
            self._error(HTTPStatus.NOT_FOUND, f"no page `{path}'", head)
        else:
            self._send(HTTPStatus.OK, found[0], found[1], head)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._get(False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._get(True)

    def _read_only(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "this server is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _read_only  # noqa: N815


def serve(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str] | None = None,
          host: str = "127.0.0.1", port: int = 8000, ready: object = None, quiet: bool = True) -> None:
    """Serve until interrupted; ``ready(url)`` is called once listening."""
    try:
        server = ReportServer(prefix, cache, names, host, port, quiet)
    except OSError as exc:
        raise BackbeatError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        if callable(ready):
            ready(server.url)
        server.serve_forever(poll_interval=0.25)
    finally:
        with contextlib.suppress(Exception):
            server.server_close()
