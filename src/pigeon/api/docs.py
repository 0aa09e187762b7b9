"""/docs: Swagger UI from files Pigeon serves itself, so the page works without the internet.

The files come from the pinned `swagger-ui-bundle-v2` package (Swagger UI's own dist files);
their URL carries the Swagger UI version, so a browser may cache them for good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from litestar import get
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import PathParameter
from litestar.response import File
from swagger_ui_bundle import swagger_ui_path

SWAGGER_UI = Path(str(swagger_ui_path))
ASSETS = f"/docs/assets/{SWAGGER_UI.name}"  # e.g. /docs/assets/swagger-ui-5.31.0
_SERVED = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
_SOURCE_MAPS = {
    f"{name}.map": "application/json" for name in _SERVED if name.endswith((".js", ".css"))
}
_CACHED_FOR_GOOD = {"cache-control": "public, max-age=31536000, immutable"}


@get(f"{ASSETS}/{{name:str}}", include_in_schema=False, sync_to_thread=False)
def swagger_ui_asset(name: Annotated[str, PathParameter()]) -> File:
    """One of Swagger UI's files (nothing else from the package's folder)."""
    media_type = _SERVED.get(name) or _SOURCE_MAPS.get(name)
    if media_type is None:
        raise NotFoundException(f"no Swagger UI file {name}")
    return File(
        SWAGGER_UI / name,
        media_type=media_type,
        content_disposition_type="inline",
        headers=_CACHED_FOR_GOOD,
    )


swagger_ui = SwaggerRenderPlugin(
    path="/",
    js_url=f"{ASSETS}/swagger-ui-bundle.js",
    css_url=f"{ASSETS}/swagger-ui.css",
    standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
    favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
)
