"""The dashboard's web app: Starlette routes rendering Jinja2 templates, HTML first.

Every page is complete HTML from the server, so reading works without JavaScript; the only
script refreshes a running run's stages in place (without it the page reloads itself).

Safety, by default:

- only requests whose ``Host`` is this machine's loopback name are answered (a web page
  elsewhere cannot reach the dashboard through DNS rebinding);
- every POST (promote, rollback, try-it) carries a token made when the process starts and
  embedded in the dashboard's own forms; a forged cross-site POST cannot know it (403);
- pages may not be framed (no click-jacking of the promote button) and load nothing from
  another origin (Content-Security-Policy);
- every page passes through :meth:`Project.scrub`, which masks the config's secret values
  even if one reached a log or an error message;
- an unknown run or version is a 404 page; a store or server failure is a page naming it,
  never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from prodml.core.errors import ProdmlError
from prodml.ui import charts
from prodml.ui.data import NotFound, Project, lineage

log = logging.getLogger("prodml.ui")
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_when, duration=_duration, size=_size, num=_num, pretty=_pretty, ago=_ago, short=_short
    )
    return env


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    return _duration((datetime.now(UTC) - value).total_seconds()) + " ago"


def _size(n: float | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def _short(text: str | None, n: int = 12) -> str:
    return "" if not text else (text if len(text) <= n else text[:n] + "…")


def _page_number(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


def create_app(project: Project, *, token: str | None = None, host: str = "127.0.0.1") -> Starlette:
    """The dashboard of ``project``.

    Args:
        project: the project to show.
        token: the POST token (default: a new random one for this process).
        host: the address the server binds; requests naming another ``Host`` are refused.
    """
    token = token or secrets.token_urlsafe(32)
    env = _templates()

    def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(
            request=request,
            project=project,
            token=token,
            nav=template.split(".")[0],
            has_features=_safe(project.has_feature_store, False),
            **context,
        )
        return HTMLResponse(project.scrub(html), status_code=status, headers=SECURITY_HEADERS)

    def problem(request: Request, exc: BaseException, status: int = 502) -> HTMLResponse:
        message = str(exc) if isinstance(exc, ProdmlError | NotFound) else f"{type(exc).__name__}: {exc}"
        return render(request, "error.html", status=status, status_code=status, message=message)

    def check_token(form: Any) -> None:
        given = str(form.get("token", ""))
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(403, "this form was not sent by this dashboard (missing or wrong token)")

    # -- pages ---------------------------------------------------------------------------

    def overview(request: Request) -> Response:
        runs = project.runs(1, 5)
        latest, problem_text = None, ""
        if project.has_store:
            try:
                latest = project.version("latest")
            except NotFound:
                latest = None
            except ProdmlError as exc:
                problem_text = str(exc)
        return render(
            request,
            "overview.html",
            runs=runs,
            latest=latest,
            store_problem=problem_text,
            servers=_safe(project.servers, []),
        )

    def runs(request: Request) -> Response:
        return render(request, "runs.html", page=project.runs(_page_number(request)))

    def run(request: Request) -> Response:
        view = project.run(request.path_params["run_id"])
        return render(
            request,
            "run.html",
            run=view,
            resume=project.resume_command(view),
            outputs=project.outputs(view),
            config=project.config_summary(),
            config_matches=project.config_matches(view),
            log_text=project.run_log(view),
        )

    def run_stages(request: Request) -> Response:
        view = project.run(request.path_params["run_id"])
        return render(request, "_stages.html", run=view)

    def models(request: Request) -> Response:
        if not project.has_store:
            return render(request, "models.html", page=None, message=request.query_params.get("msg"))
        try:
            page = project.versions(_page_number(request))
        except ProdmlError as exc:
            return problem(request, exc)
        return render(request, "models.html", page=page, message=request.query_params.get("msg"))

    def history(request: Request) -> Response:
        # its own page: a store keeps one record per move, so reading them all costs a request each
        try:
            moves = project.history() if project.has_store else None
        except ProdmlError as exc:
            return problem(request, exc)
        return render(request, "history.html", history=moves)

    def version(request: Request) -> Response:
        view = project.version(request.path_params["version"])
        return render(
            request,
            "version.html",
            version=view,
            charts=charts.curves_svg(view.history),
            lineage=lineage(view),
            latest=project.latest_version(),
        )

    def compare(request: Request) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        if not a or not b:
            return RedirectResponse("/models", status_code=303)
        return render(request, "compare.html", cmp=project.compare(a, b))

    async def promote(request: Request) -> Response:
        # the form is read here; the work (store writes, a server moving, a request) in a thread
        form = await request.form()
        return await run_in_threadpool(_promote, request, form)

    def _promote(request: Request, form: Any) -> Response:
        check_token(form)
        version = str(form.get("version", ""))
        if form.get("confirm") != "yes":
            return render(request, "confirm.html", action="promote", version=project.version(version))
        try:
            message = project.promote(version)
        except ProdmlError as exc:
            return problem(request, exc, 409)
        log.info("dashboard: %s", message)
        return RedirectResponse(f"/models?msg={quote(message)}", status_code=303)

    async def rollback(request: Request) -> Response:
        # the form is read here; the work (store writes, a server moving, a request) in a thread
        form = await request.form()
        return await run_in_threadpool(_rollback, request, form)

    def _rollback(request: Request, form: Any) -> Response:
        check_token(form)
        if form.get("confirm") != "yes":
            return render(request, "confirm.html", action="rollback", version=None)
        try:
            message = project.rollback()
        except ProdmlError as exc:
            return problem(request, exc, 409)
        log.info("dashboard: %s", message)
        return RedirectResponse(f"/models?msg={quote(message)}", status_code=303)

    def endpoint_context(server_name: str | None = None) -> dict[str, Any]:
        servers = project.servers()
        forms = []
        lookup = bool(getattr(project.config.section("server"), "feature_lookup", False))
        for server in servers:
            try:
                meta = project.metadata(server.version)
            except ProdmlError as exc:
                forms.append({"server": server, "fields": [], "problem": str(exc)})
                continue
            by_entity = lookup and bool(meta.entity_keys)
            fields = list(meta.entity_keys) if by_entity else meta.feature_names
            example = _safe(lambda fields=fields: project.example_row(fields), {})
            forms.append(
                {
                    "server": server,
                    "fields": [(name, example.get(name, "")) for name in fields],
                    "by_entity": by_entity,
                    "problem": "",
                }
            )
        return {"servers": servers, "forms": forms}

    def endpoints(request: Request) -> Response:
        return render(request, "endpoints.html", result=None, **endpoint_context())

    async def try_it(request: Request) -> Response:
        # the form is read here; the work (store writes, a server moving, a request) in a thread
        form = await request.form()
        return await run_in_threadpool(_try_it, request, form)

    def _try_it(request: Request, form: Any) -> Response:
        check_token(form)
        name = request.path_params["name"]
        server = project.server(name)
        context = endpoint_context()
        chosen = next((f for f in context["forms"] if f["server"].model_name == name), None)
        if chosen is None or not chosen["fields"]:
            raise NotFound(f"no try-it form for {name!r}")
        protocol = "v2" if form.get("protocol") == "v2" else "v1"
        row: dict[str, Any] = {}
        bad = []
        for field_name, _ in chosen["fields"]:
            raw = str(form.get(f"f_{field_name}", "")).strip()
            row[field_name] = _number(raw, integer=chosen["by_entity"])
            if row[field_name] is None:
                bad.append(field_name)
        if bad:
            result = {"error": f"not a number: {', '.join(bad)}"}
        else:
            try:
                result = project.try_it(server, [row], protocol=protocol)
            except (ProdmlError, ValueError) as exc:
                result = {"error": str(exc)}
        for f in context["forms"]:  # keep what was typed
            if f["server"].model_name == name:
                f["fields"] = [(n, form.get(f"f_{n}", "")) for n, _ in f["fields"]]
        result.update(server=name, protocol=protocol, request=row)
        return render(request, "endpoints.html", result=result, **context)

    def features(request: Request) -> Response:
        if not project.has_feature_store():
            raise NotFound("the source of this project is not a feature store")
        views = project.feature_views()
        keys = sorted({k for v in views for k in v["entities"]})
        entity = {k: request.query_params.get(k, "").strip() for k in keys}
        values, error = None, ""
        if any(entity.values()):
            try:
                typed = {
                    k: _number(v, integer=True) if v.lstrip("-").isdigit() else v for k, v in entity.items()
                }
                values = project.online_values(typed)
            except ProdmlError as exc:
                error = str(exc)
        refs: list[str] = []
        latest = project.latest_version() if project.has_store else None
        if latest:
            refs = _safe(lambda: list(project.metadata(latest).feature_refs), [])
        return render(
            request,
            "features.html",
            views=views,
            keys=keys,
            entity=entity,
            values=values,
            error=error,
            refs=refs,
        )

    # -- errors ----------------------------------------------------------------------------

    async def not_found(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", status=404, status_code=404, message=str(exc))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return render(
            request, "error.html", status=exc.status_code, status_code=exc.status_code, message=exc.detail
        )

    async def prodml_error(request: Request, exc: Exception) -> Response:
        return problem(request, exc)

    async def internal_error(request: Request, exc: Exception) -> Response:
        # a bug of the dashboard: the traceback goes to its log, the page names the error only
        log.error("dashboard error on %s", request.url.path, exc_info=exc)
        return problem(request, exc, 500)

    routes = [
        Route("/", overview),
        Route("/runs", runs),
        Route("/runs/{run_id}", run),
        Route("/runs/{run_id}/stages", run_stages),
        Route("/models", models),
        Route("/models/promote", promote, methods=["POST"]),
        Route("/models/rollback", rollback, methods=["POST"]),
        Route("/models/{version}", version),
        Route("/compare", compare),
        Route("/history", history),
        Route("/endpoints", endpoints),
        Route("/endpoints/{name}/try", try_it, methods=["POST"]),
        Route("/features", features),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    allowed = list(dict.fromkeys([*LOOPBACK_NAMES, host]))
    if host in ("0.0.0.0", "::", ""):  # bound to every interface on purpose: any name may reach it
        allowed = ["*"]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed)],
        exception_handlers={
            NotFound: not_found,
            HTTPException: http_error,
            ProdmlError: prodml_error,
            Exception: internal_error,
        },
    )
    app.state.token = token
    app.state.project = project
    return app


def _safe(call: Any, default: Any) -> Any:
    """``call()``, or ``default`` when a backend fails (a widget must not take a page down)."""
    try:
        return call()
    except Exception as exc:  # a broken server probe or store must not hide the rest
        log.debug("dashboard widget failed: %s", exc)
        return default


def _number(text: str, *, integer: bool = False) -> Any:
    if integer and text.lstrip("-").isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text if integer and text else None
