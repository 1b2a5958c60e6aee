"""The web page and the offline API docs of ``ncf serve`` (issue 18).

``mount_web(app, service)`` adds:

- ``GET /``: a page (``ncf/serve/web/``: plain HTML, CSS and JavaScript, no build step, no
  CDN) to pick a user, see their history and recommendations with scores, similar items for
  any item, record an interaction by clicking an item (the lists update in place), and
  switch re-ranking on where the run has ``rerank.json``;
- ``GET /v1/info``: what the page needs to start (model, sizes, some user ids, re-ranking);
- ``GET /v1/users/{user_id}/history``: the user's training items and the items recorded
  through the API, with titles where the dataset has them;
- ``GET /docs`` and ``GET /redoc``: FastAPI's Swagger UI and ReDoc pages with their JavaScript
  and CSS served under ``/static/docs`` from the ``fastapi-offline`` package (MIT; it ships
  swagger-ui-dist 5, Apache-2.0, and ReDoc 2, MIT: 2.8 MB), so the docs work on a machine
  without internet (FastAPI's default pages load them from a CDN). Swagger UI 5 is needed:
  FastAPI's schema is OpenAPI 3.1, which Swagger UI 4 does not render.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, StrictInt, StrictStr

WEB = Path(__file__).with_name("web")


class HistoryItem(BaseModel):
    item: StrictInt | StrictStr
    title: str | None = None


class History(BaseModel):
    user: StrictInt | StrictStr
    known: bool  # the model was trained on this user
    n_train: int
    train: list[HistoryItem]  # training items (at most ``limit``)
    recorded: list[HistoryItem]  # recorded through the API


class Info(BaseModel):
    model: str
    run: str
    n_users: int
    n_items: int
    rerank: bool
    rerank_reason: str | None = None
    fold_in: str | None = None  # "vector", "history" or None (ncf.serve.foldin)
    ann: bool = False
    sample_users: list[StrictInt | StrictStr]
    visitor_prefix: str  # prefix of ids the page makes up for a new visitor


def docs_assets() -> Path | None:
    """Folder holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js (or None)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    static = Path(fastapi_offline.__file__).with_name("static")
    return static if (static / "swagger-ui-bundle.js").exists() else None


def mount_web(app: FastAPI, service, read_deps: list | None = None) -> None:
    """Add the page, its API helpers and the offline ``/docs`` to ``app`` (built with ``docs_url=None``)."""
    app.mount("/web", StaticFiles(directory=WEB), name="web")
    assets = docs_assets()
    if assets is not None:
        app.mount("/static/docs", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html", media_type="text/html")

    def _missing():
        return HTMLResponse("<p>The API docs pages need the fastapi-offline package (pip install 'ncf[serve]'); "
                            "the schema is at <a href='/openapi.json'>/openapi.json</a>.</p>", status_code=501)

    @app.get("/docs", include_in_schema=False)
    def docs():
        if assets is None:
            return _missing()
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/docs/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        if assets is None:
            return _missing()
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False)

    rec = service.rec

    @app.get("/v1/info", response_model=Info, response_model_exclude_none=True, dependencies=read_deps or [])
    def info():
        users = rec.user_map.raw_ids[:20]
        return {"model": rec.model.name, "run": service.run_dir.name, "n_users": rec.model.n_users,
                "n_items": rec.n_items, "rerank": rec.reranker is not None,
                "rerank_reason": None if rec.reranker is not None else rec.rerank_reason,
                "fold_in": service.foldin.kind if service.foldin is not None else None,
                "ann": service.use_ann, "sample_users": list(users),
                "visitor_prefix": "9000" if service.int_ids["user"] else "visitor-"}

    @app.get("/v1/users/{user_id:path}/history", response_model=History, response_model_exclude_none=True,
             dependencies=read_deps or [])
    def history(user_id: str, limit: int = Query(100, ge=0, le=10_000, description="training items listed")):
        user = service.parse_id(user_id, "user")
        service.ensure_ready()
        state = service.read_user(user)
        train = [{"item": rec.item_map.raw(int(i)), "title": rec.title(int(i))} for i in state.seen[:limit]]
        recorded = []
        for raw in state.events:
            idx = rec.item_map.get(raw)
            recorded.append({"item": rec.item_map.raw(idx) if idx is not None else raw,
                             "title": rec.title(idx) if idx is not None else None})
        who = service._raw(user, "user") if state.index is None else rec.user_map.raw(state.index)
        return {"user": who, "known": state.index is not None, "n_train": len(state.seen), "train": train,
                "recorded": recorded}
