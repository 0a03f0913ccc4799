"""ReDoc's script as this server serves it: whole, and without Redocly's logo from their CDN.

drf-spectacular's sidecar ships the script; its sidebar shows "API docs by Redocly" with an
image fetched from cdn.redoc.ly, which no option turns off. Served here with that image's
address emptied, ReDoc drops the image (its error handler) and the page fetches nothing
from outside (templates/drf_spectacular/redoc.html; a browser test records every request).
"""

from functools import cache
from pathlib import Path

from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse

BUNDLE = "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"
REDOCLY_LOGO = b'"https://cdn.redoc.ly/redoc/logo-mini.svg"'
SOURCE_MAP = b"//# sourceMappingURL=redoc.standalone.js.map"  # not served here


@cache
def _bundle() -> bytes:
    script = Path(finders.find(BUNDLE)).read_bytes()
    return script.replace(REDOCLY_LOGO, b'""').replace(SOURCE_MAP, b"")


def redoc_script(request: HttpRequest) -> HttpResponse:
    """GET /api/redoc/redoc.standalone.js: the sidecar's ReDoc, without the CDN logo."""
    return HttpResponse(
        _bundle(), content_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
    )
