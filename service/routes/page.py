"""``GET /``: the page to ask questions (``service/static/``: one HTML file, its script, its style sheet, its icon).

Static files only, no build step, nothing fetched from elsewhere. The Content-Security-Policy lets the page load
its own script, style and icon and talk to this server only; the script inserts every text (block texts are
user data) as text nodes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFound

STATIC = Path(__file__).resolve().parent.parent / "static"
# The files the page is made of, by the name in its URL, with their media types; nothing else is served.
FILES = {"page.js": "text/javascript", "page.css": "text/css", "icon.svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    """One of :data:`FILES`; any other name is 404 in the error shape."""
    if name not in FILES:
        raise NotFound(f"no static file {name!r}", param="name")
    return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)
