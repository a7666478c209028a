"""The dashboard's ASGI app (Starlette): three pages, their live events, the actions.

    app = create_app(session, guard=Guard(), allowed_hosts=["127.0.0.1:8765"])

Pages (``/``, ``/jobs``, ``/jobs/{id}``) are HTML skeletons; the page's
script opens ``/events`` (server-sent events from :class:`~shoal.web.live.Hub`)
and draws what arrives. Actions are POSTs that carry the session's CSRF token
and run one admin command with the admin's session; the server decides whether
this admin may (a refusal comes back as a message the page shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from shoal import __version__
from shoal.admin.commands import AdminSessionLike
from shoal.errors import (
    ConfigError,
    NotAuthorizedError,
    NotFoundError,
    ShoalError,
    TransportError,
)
from shoal.jobs.archive import MAX_ARCHIVE_BYTES
from shoal.web.events import sse_frame
from shoal.web.live import Hub, check_topics
from shoal.web.security import COOKIE, CSRF_HEADER, ActionRefused, Guard, same_origin
from shoal.web.snapshots import allowed_commands

__all__ = ["create_app", "transfer_jobs"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_S = 15.0
_SECURITY_HEADERS = {
    # Scripts and styles only from the package; uPlot styles its canvas from script.
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def transfer_jobs(folder: Path) -> list[str]:
    """Job folders and archives in the kit's ``transfer/`` folder, by name."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if (p.is_dir() and ((p / "job.yml").is_file() or (p / "meta.json").is_file()))
        or (p.is_file() and p.suffix == ".zip")
    )


class _Dashboard:
    """The routes' shared state: the admin session, the hub, the guard."""

    def __init__(self, session: AdminSessionLike, guard: Guard, transfer: Path) -> None:
        self.session = session
        self.guard = guard
        self.transfer = transfer
        self.hub = Hub(session)
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))

    # -- sessions --------------------------------------------------------------

    def _sid(self, request: Request) -> str | None:
        sid = request.cookies.get(COOKIE)
        return sid if self.guard.valid(sid) else None

    def _page(self, request: Request, template: str, **context: Any) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            sid = self.guard.login(token)
            if sid is None:
                return self._not_logged_in(request, "that login token is not this dashboard's")
            # Drop the token from the address bar (and from the history).
            response: Response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/")
            return response
        sid = self._sid(request)
        if sid is None:
            return self._not_logged_in(request, "no session")
        role = self.session.role
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "csrf_token": self.guard.csrf_token(sid),
                "user": self.session.user,
                "role": role,
                "server": self.session.server_name,
                "version": __version__,
                "allowed": allowed_commands(role),
                **context,
            },
            headers=_SECURITY_HEADERS,
        )

    def _not_logged_in(self, request: Request, why: str) -> Response:
        return self.templates.TemplateResponse(
            request,
            "login.html",
            {"why": why, "version": __version__},
            status_code=401,
            headers=_SECURITY_HEADERS,
        )

    # -- pages -----------------------------------------------------------------

    async def federation_page(self, request: Request) -> Response:
        return self._page(request, "federation.html", topics=["federation"])

    async def jobs_page(self, request: Request) -> Response:
        return self._page(
            request,
            "jobs.html",
            topics=["jobs"],
            transfer=str(self.transfer),
            transfer_jobs=transfer_jobs(self.transfer),
            max_upload_mb=MAX_ARCHIVE_BYTES // 2**20,
        )

    async def job_page(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        return self._page(request, "job.html", topics=[f"job:{job_id}"], job_id=job_id)

    # -- events ----------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        if self._sid(request) is None:
            return JSONResponse({"error": "not logged in"}, status_code=401)
        try:
            topics = check_topics(request.query_params.getlist("topic"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(
            self._stream(topics),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _stream(self, topics: frozenset[str]) -> AsyncIterator[str]:
        sub = self.hub.subscribe(topics)
        try:
            # The browser reconnects after this many ms if the stream drops.
            yield "retry: 2000\n\n"
            while not sub.dropped:
                try:
                    event, data = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield sse_frame(event, data)
        finally:
            self.hub.unsubscribe(sub)

    # -- actions ---------------------------------------------------------------

    async def _read_form(self, request: Request) -> Any:
        # Session and origin first: a stranger's upload is not even read.
        if self._sid(request) is None:
            raise ActionRefused("not logged in: open the URL `shoal dashboard` printed")
        headers = request.headers
        if not same_origin(headers.get("origin"), headers.get("referer"), headers.get("host")):
            raise ActionRefused("the request did not come from this dashboard's pages")
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_ARCHIVE_BYTES + 1024 * 1024:
            raise ConfigError(
                f"upload of {length} bytes refused: a job archive is at most "
                f"{MAX_ARCHIVE_BYTES // 2**20} MiB"
            )
        return await request.form(max_files=1, max_fields=10)

    def _check(self, request: Request, form: Any) -> None:
        token = request.headers.get(CSRF_HEADER) or form.get("csrf_token")
        self.guard.check_action(
            self._sid(request),
            token if isinstance(token, str) else None,
            origin=request.headers.get("origin"),
            referer=request.headers.get("referer"),
            host=request.headers.get("host"),
        )

    async def action(self, request: Request) -> Response:
        command = request.path_params["command"]
        job_id = request.path_params.get("job_id")
        form = None
        try:
            form = await self._read_form(request)
            self._check(request, form)
            if command == "submit_job":
                result = await self._submit(form)
            elif command == "download_job" and job_id:
                return await self._download(job_id)
            elif command in ("abort_job", "clone_job", "delete_job") and job_id:
                result = await anyio.to_thread.run_sync(self._job_command, command, job_id)
            else:
                return JSONResponse({"ok": False, "message": "no such action"}, status_code=404)
        except Exception as exc:
            return self._refusal(command, exc)
        finally:
            if form is not None:
                await form.close()  # an uploaded file's spool
        self.hub.refresh("jobs", "federation", *(f"job:{j}" for j in (job_id,) if j))
        return JSONResponse({"ok": True, **result})

    def _job_command(self, command: str, job_id: str) -> dict[str, Any]:
        s = self.session
        if command == "abort_job":
            s.abort_job(job_id)
            return {"message": f"Abort sent to job {job_id}."}
        if command == "clone_job":
            new_id = s.clone_job(job_id)
            return {"message": f"Cloned job {job_id} as {new_id}.", "job_id": new_id}
        s.delete_job(job_id)
        return {"message": f"Deleted job {job_id}.", "deleted": job_id}

    async def _submit(self, form: Any) -> dict[str, Any]:
        upload = form.get("archive")
        name = form.get("source")
        if isinstance(upload, UploadFile) and upload.filename:
            with tempfile.TemporaryDirectory(prefix="shoal-dashboard-") as tmp:
                path = Path(tmp) / "job.zip"
                with path.open("wb") as out:
                    await anyio.to_thread.run_sync(shutil.copyfileobj, upload.file, out)
                job_id = await anyio.to_thread.run_sync(self.session.submit_job, path)
            what = upload.filename
        elif isinstance(name, str) and name.strip():
            job_id = await anyio.to_thread.run_sync(self.session.submit_job, name.strip())
            what = name.strip()
        else:
            raise ConfigError("choose a job folder from transfer/ or a .zip archive to upload")
        return {"message": f"Submitted {what} as job {job_id}.", "job_id": job_id}

    async def _download(self, job_id: str) -> Response:
        """The job's results, downloaded into the kit's ``transfer/`` (as the
        console does) and handed to the browser as one zip."""
        folder = await anyio.to_thread.run_sync(self.session.download_job, job_id, self.transfer)
        tmp = Path(tempfile.mkdtemp(prefix="shoal-dashboard-"))
        archive = await anyio.to_thread.run_sync(
            shutil.make_archive, str(tmp / folder.name), "zip", str(folder)
        )
        return FileResponse(
            archive,
            media_type="application/zip",
            filename=f"{folder.name}.zip",
            background=BackgroundTask(shutil.rmtree, tmp, True),
        )

    def _refusal(self, command: str, exc: Exception) -> Response:
        role = self.session.role
        if isinstance(exc, ActionRefused):
            status, message = 403, f"Refused: {exc}"
        elif isinstance(exc, NotAuthorizedError):
            status, message = 403, f"Not allowed for your role ({role}): {exc}"
        elif isinstance(exc, NotFoundError):
            status, message = 404, f"Not found: {exc}"
        elif isinstance(exc, ConfigError):
            status, message = 400, f"Refused: {exc}"
        elif isinstance(exc, TransportError):
            status, message = 502, f"The server could not be reached: {exc}"
        elif isinstance(exc, ShoalError):
            status, message = 500, f"{command} failed: {exc}"
        else:
            log.exception("dashboard: %s failed", command)
            status, message = 500, f"{command} failed: unexpected {type(exc).__name__}: {exc}"
        log.info("dashboard: %s refused: %s", command, message)
        return JSONResponse({"ok": False, "message": message}, status_code=status)


def create_app(
    session: AdminSessionLike,
    *,
    guard: Guard,
    allowed_hosts: Sequence[str],
    transfer: Path,
) -> Starlette:
    """The dashboard for ``session`` (the admin's own). ``allowed_hosts``:
    the ``Host`` values a request may carry (``["*"]`` accepts any)."""
    d = _Dashboard(session, guard, transfer)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = asyncio.create_task(d.hub.run())
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    routes = [
        Route("/", d.federation_page),
        Route("/jobs", d.jobs_page),
        Route("/jobs/{job_id}", d.job_page),
        Route("/events", d.events),
        Route("/actions/{command}", d.action, methods=["POST"]),
        Route("/actions/{command}/{job_id}", d.action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.dashboard = d
    return app
