"""/docs works without the internet: every file the page loads comes from Pigeon itself."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

from tests.conftest import Server


class _Links(HTMLParser):
    """Every URL a page loads: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


def test_the_docs_page_loads_only_files_pigeon_serves(server: Server) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        links = _Links()
        links.feed(page.text)
        assert len(links.urls) >= 4, links.urls  # the bundle, the preset, the styles, the icon
        for url in links.urls:
            parts = urlsplit(url)
            assert not parts.scheme, f"{url} is not on Pigeon"
            assert not parts.netloc, f"{url} is not on Pigeon"
            assert url.startswith("/"), url
            asset = client.get(urljoin(f"{server.base_url}/docs", url))
            assert asset.status_code == 200, url
            assert asset.content, url
        assert "https://" not in page.text.split("<body>")[0]


def test_the_swagger_ui_files_are_cacheable_and_nothing_else_is_served(server: Server) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        links = _Links()
        links.feed(client.get("/docs").text)
        script = next(url for url in links.urls if url.endswith("swagger-ui-bundle.js"))
        response = client.get(script)
        assert response.headers["content-type"].startswith("text/javascript")
        assert "immutable" in response.headers["cache-control"]
        folder = script.rsplit("/", 1)[0]
        for other in ("index.html", "swagger-initializer.js", "..%2F__init__.py"):
            assert client.get(f"{folder}/{other}").status_code == 404, other
