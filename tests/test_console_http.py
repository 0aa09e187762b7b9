"""The console's sessions and headers, over plain HTTP: cookies, CSRF, CSP, sign-out and
revocation end a session, the API key never comes back."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.conftest import Server, make_server
from tests.factories import Tenant, create_tenant

CSP = "default-src 'self'"


def _login_token(client: httpx.Client) -> str:
    page = client.get("/console/login")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def sign_in(server: Server, tenant: Tenant) -> httpx.Client:
    client = httpx.Client(base_url=server.base_url, timeout=30)
    token = _login_token(client)
    answer = client.post("/console/login", data={"csrf_token": token, "api_key": tenant.api_key})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console"
    return client


def _form_token(client: httpx.Client) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/keys").text)
    assert found is not None
    return found.group(1)


def test_the_session_cookie_and_the_page_headers(server: Server) -> None:
    tenant = create_tenant(server)
    client = httpx.Client(base_url=server.base_url, timeout=30)
    token = _login_token(client)
    answer = client.post("/console/login", data={"csrf_token": token, "api_key": tenant.api_key})
    cookie = next(
        v for k, v in answer.headers.multi_items() if k == "set-cookie" and "pigeon_console=" in v
    )
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/console" in attributes
    assert any(part.startswith("max-age=") and int(part[8:]) > 0 for part in attributes)
    assert "secure" not in attributes  # plain http here
    assert tenant.api_key not in cookie

    for path in ("/console", "/console/messages", "/console/keys", "/console/messages/1234"):
        page = client.get(path)
        assert page.headers["content-security-policy"] == CSP, path
        assert page.headers["x-frame-options"] == "DENY"
        assert "<script>" not in page.text  # no inline script: only the packaged console.js
        assert 'src="/console/static/console.js"' in page.text
        assert tenant.api_key not in page.text
    assert client.get("/console/messages/1234").status_code == 404
    assert client.get("/console/static/console.js").status_code == 200
    assert tenant.api_key not in server.log_path.read_text()


def test_signing_in_needs_the_form_token_and_a_valid_key(server: Server) -> None:
    tenant = create_tenant(server)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        token = _login_token(client)
        refused = client.post("/console/login", data={"api_key": tenant.api_key})
        assert refused.status_code == 403
        assert "CSRF" in refused.text
        wrong = client.post("/console/login", data={"csrf_token": token, "api_key": "nope-123"})
        assert wrong.status_code == 401
        assert "not valid" in wrong.text
        assert "nope-123" not in wrong.text  # the key typed is not echoed back
        assert "pigeon_console=" not in wrong.headers.get("set-cookie", "")
        # Without a session every page leads to the sign-in form; a refresh gets a 401.
        assert client.get("/console/messages").headers["location"] == "/console/login"
        fragment = client.get("/console/messages/rows", headers={"x-console-fragment": "1"})
        assert fragment.status_code == 401


def test_sign_out_and_revocation_end_the_session(server: Server) -> None:
    tenant = create_tenant(server)
    client = sign_in(server, tenant)
    stolen = dict(client.cookies)
    assert client.get("/console/messages").status_code == 200
    assert client.get("/console/login").headers["location"] == "/console"  # signed in already
    # A POST without the session's form token changes nothing.
    assert client.post("/console/logout").status_code == 403
    assert client.get("/console/messages").status_code == 200
    out = client.post("/console/logout", data={"csrf_token": _form_token(client)})
    assert out.status_code == 303
    assert out.headers["location"] == "/console/login"
    with httpx.Client(base_url=server.base_url, cookies=stolen, timeout=30) as replay:
        assert replay.get("/console/messages").status_code == 303  # the row is gone

    client = sign_in(server, tenant)
    answer = client.post(
        f"/console/keys/{tenant.key_id}/revoke", data={"csrf_token": _form_token(client)}
    )
    assert answer.status_code == 303
    assert client.get("/console/messages").status_code == 303  # its key is revoked
    other = create_tenant(server)
    theirs = sign_in(server, other)
    not_mine = theirs.post(
        f"/console/keys/{tenant.key_id}/revoke", data={"csrf_token": _form_token(theirs)}
    )
    assert not_mine.status_code == 404


def test_the_cookie_is_secure_behind_https(tmp_path: Path) -> None:
    srv = make_server(tmp_path, PIGEON_PUBLIC_URL="https://pigeon.example")
    srv.start()
    try:
        client = httpx.Client(base_url=srv.base_url, timeout=30)
        page = client.get("/console/login")
        assert "secure" in page.headers["set-cookie"].lower()
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        answer = client.post(
            "/console/login",
            data={"csrf_token": token, "api_key": "AXVubzpwQDU1dzByYM=="},
            # An http client keeps a Secure cookie to itself: sent by hand, as over https.
            headers={"cookie": f"pigeon_console_login={token}"},
        )
        assert answer.status_code == 303
        cookie = next(
            v
            for k, v in answer.headers.multi_items()
            if k == "set-cookie" and "pigeon_console=" in v
        )
        assert "secure" in [part.strip().lower() for part in cookie.split(";")]
    finally:
        srv.stop()
