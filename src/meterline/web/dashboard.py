"""The dashboard: server-rendered page shells, the login form, and the static assets they load.

Every page is a Jinja template holding the shared navigation, the time-range picker and the
filter form (rendered from the query string, so the picker and filters work as plain links and
GET forms), plus empty chart and table containers. The page's own script (`static/js/<page>.js`)
fills them from the JSON API with `fetch`, using the session cookie.

Sign-in: `POST /login` takes the master key or a `read:team` key (which sees only its team),
checks it with the gateway's authenticator and sets the signed session cookie of `WebAuth`
(HttpOnly, SameSite=Strict, Path=/). Pages without a valid session redirect to
`/login?next=<page>`. Only `/login` and `/logout` accept POSTs, and both refuse a request whose
`Origin` (or, without it, `Referer`) names another host.

Plotly.js is served from the installed `plotly` package, so the dashboard needs no network.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.resources
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import jinja2
import plotly
from aiohttp import web

from meterline.web.auth import SESSION_COOKIE, SESSION_SECONDS, WebAuth


@dataclass(frozen=True)
class Page:
    name: str
    """The template `<name>.html` and script `static/js/<name>.js`."""
    title: str
    charts: bool = True
    """Whether the page loads Plotly.js."""
    ranged: bool = True
    """Whether the page shows the time-range picker and the filters (its data depends on them)."""
    admin_only: bool = False
    """Whether only the master key and admin sessions see it (its data spans every team)."""


PAGES: dict[str, Page] = {
    "/": Page("overview", "Overview"),
    "/features": Page("features", "Features"),
    "/users": Page("users", "Users"),
    "/models": Page("models", "Models & providers"),
    "/cache": Page("cache", "Cache"),
    "/errors": Page("errors", "Errors"),
    "/agents": Page("agents", "Agents"),
    "/insights": Page("insights", "Insights"),
    "/requests": Page("requests", "Requests", charts=False),
    "/pricing": Page("pricing", "Pricing", charts=False, ranged=False),
    "/alerts": Page("alerts", "Alerts", charts=False, ranged=False, admin_only=True),
}

FILTERS = ("team", "app", "feature", "user", "model", "provider")
"""Filters every page takes and every navigation link carries (each is also a filter of /api/v1/events)."""
CARRIED = ("since", "until", *FILTERS)
"""The query parameters that carry across pages: the time range and the filters."""
RANGES = ("24h", "7d", "30d")
DEFAULT_SINCE = "7d"

STATIC_DIR = Path(__file__).parent / "static"
TEMPLATES_DIR = Path(__file__).parent / "templates"
PLOTLY_URL = f"/static/vendor/plotly-{plotly.__version__}.min.js"

SECURITY_HEADERS = {
    # Plotly sets inline styles on the elements it draws; everything else comes from this origin.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class Dashboard:
    def __init__(self, auth: WebAuth) -> None:
        self.auth = auth
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=jinja2.StrictUndefined
        )
        self.static_files = {
            path.relative_to(STATIC_DIR).as_posix(): path for path in STATIC_DIR.rglob("*") if path.is_file()
        }
        self._plotly_gzip: bytes | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            *(web.get(path, self.page) for path in PAGES),
            web.get("/login", self.login_form),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
            web.get(PLOTLY_URL, self.plotly_js),
            web.get("/static/{name:.+}", self.static),
        ]

    def render(self, template: str, status: int = 200, **context: object) -> web.Response:
        html = self.templates.get_template(template).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS)

    async def page(self, request: web.Request) -> web.Response:
        identity = self.auth.identity(request)
        if identity is None or not self.auth.may_read(identity):
            raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
        page = PAGES[request.path]
        if page.admin_only and not identity.is_admin:
            raise web.HTTPForbidden(text=f"{page.title} covers every team: sign in with the master key to see it")
        return self.render(
            f"{page.name}.html",
            page=page,
            pages={path: item for path, item in PAGES.items() if identity.is_admin or not item.admin_only},
            request_path=request.path,
            query=request.query,
            view=View({name: request.query.get(name, "") for name in CARRIED}),
            ranges=RANGES,
            filters=FILTERS,
            plotly_url=PLOTLY_URL,
            scoped_team=None if identity.is_admin else identity.team,
        )

    async def login_form(self, request: web.Request) -> web.Response:
        next_path = safe_next(request.query.get("next", "/"))
        identity = self.auth.identity(request)
        if identity is not None and self.auth.may_read(identity):
            raise web.HTTPSeeOther(next_path)
        return self.render("login.html", next_path=next_path, error=None)

    async def login(self, request: web.Request) -> web.Response:
        refuse_cross_site(request)
        form = await request.post()
        next_path = safe_next(str(form.get("next", "/")))
        identity = self.auth.authenticator.authenticate(str(form.get("key", "")).strip())
        if identity is None or not self.auth.may_read(identity):
            error = (
                "That key is not valid."
                if identity is None
                else "That key may call models but not read data: sign in with the master key or a read:team key."
            )
            return self.render("login.html", status=401, next_path=next_path, error=error)
        response = web.HTTPSeeOther(next_path)
        response.set_cookie(
            SESSION_COOKIE,
            self.auth.session_cookie(identity),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        refuse_cross_site(request)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def static(self, request: web.Request) -> web.FileResponse:
        path = self.static_files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def plotly_js(self, request: web.Request) -> web.Response:
        """Plotly.js from the `plotly` package, gzipped once; its URL names the version, so it is cached for good."""
        if self._plotly_gzip is None:
            source = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
            self._plotly_gzip = await asyncio.to_thread(gzip.compress, source.read_bytes(), 6)
        headers = {"Cache-Control": "public, max-age=31536000, immutable", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            body = self._plotly_gzip
        else:
            body = await asyncio.to_thread(gzip.decompress, self._plotly_gzip)
        return web.Response(body=body, content_type="text/javascript", headers=headers)


@dataclass(frozen=True)
class View:
    """The carried parameters of the page being shown (missing ones are empty strings)."""

    state: dict[str, str]

    @property
    def since(self) -> str:
        return self.state["since"] or DEFAULT_SINCE

    @property
    def custom(self) -> bool:
        """Whether the time range is not one of the preset spans."""
        return bool(self.state["until"]) or self.since not in RANGES

    def local(self, name: str) -> str:
        """The `since`/`until` time as a `datetime-local` input value in UTC; empty for a span such as `7d`."""
        try:
            moment = datetime.fromisoformat(self.state[name].replace("Z", "+00:00"))
        except ValueError:
            return ""
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M")

    def link(self, path: str, **changes: str) -> str:
        """`path` with the carried parameters, some changed (an empty value removes one)."""
        query = {name: value for name, value in {**self.state, **changes}.items() if value}
        return path + ("?" + urlencode(query) if query else "")

    def unfiltered(self, path: str) -> str:
        """`path` with the time range but no filters."""
        return self.link(path, **dict.fromkeys(FILTERS, ""))


def safe_next(path: str) -> str:
    """Where to go after signing in: a path on this site, never another site (`//host`, `/\\host`, `https:`).

    Browsers drop tabs and newlines from URLs and read `\\` as `/`, so a path holding either is refused too.
    """
    if not path.startswith("/") or path[1:2] == "/" or any(char == "\\" or char < " " for char in path):
        return "/"
    return path


def refuse_cross_site(request: web.Request) -> None:
    """403 for a form posted from another site: its `Origin` (else `Referer`) must name this host."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text="cross-site form posts are refused; sign in from the dashboard's own page")
