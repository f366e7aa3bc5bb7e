"""The server's defences, over raw HTTP: Host (DNS rebinding), Origin and CORS, the API key, start-up refusal."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest
from openai import OpenAI

from aipc.server.settings import ServerSettings
from tests.conftest import run_cli
from tests.test_server_support import LiveServer, chat_body

KEY = "s3cret-key-for-tests"
GOOD_ORIGIN = "http://localhost:5173"


@pytest.fixture(scope="module")
def guarded(model):
    settings = ServerSettings(api_key=KEY, allowed_origins=(GOOD_ORIGIN,), allowed_hosts=("aipc.test",))
    with LiveServer(settings, model) as live:
        yield live


def call(live: LiveServer, method: str, path: str, *, key: str | None = KEY, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = None
    if method == "POST":
        body = {"prompt": "Hi", "max_tokens": 2} if path == "/v1/completions" else chat_body(max_tokens=2)
    with httpx.Client(base_url=live.url, timeout=30) as c:
        return c.request(method, path, json=body, headers=headers)


ROUTES = [("GET", "/v1/models"), ("GET", "/v1/models/smollm2:135m"), ("POST", "/v1/chat/completions")]
ROUTES += [("POST", "/v1/completions"), ("GET", "/v1/nowhere")]
ROUTES += [("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"), ("GET", "/metrics")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_api_route_needs_the_key(guarded, method, path):
    for key, why in ((None, "missing API key"), ("wrong-key-0000", "incorrect API key")):
        r = call(guarded, method, path, key=key)
        assert r.status_code == 401, (key, r.text)
        if path.startswith("/api/"):  # Ollama's error shape
            assert why in r.json()["error"]
        else:
            assert r.json()["error"]["type"] == "authentication_error"
            assert why in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
    r = call(guarded, method, path)
    assert r.status_code in (200, 404), r.text  # the right key gets through (404: the unknown route)
    if path == "/v1/completions":  # a key given without the "Bearer" scheme is not accepted either
        assert call(guarded, method, path, key=None, Authorization=KEY).status_code == 401
        # Azure OpenAI's header, as AzureOpenAI clients send the key
        assert call(guarded, method, path, key=None, **{"api-key": KEY}).status_code == 200
        assert call(guarded, method, path, key=None, **{"api-key": "wrong-key-0000"}).status_code == 401


def test_health_and_the_static_page_need_no_key(guarded):
    assert call(guarded, "GET", "/health", key=None).status_code == 200
    page = call(guarded, "GET", "/", key=None)
    assert page.status_code == 200 and "<title>aipc chat</title>" in page.text
    assert "script-src 'sha256-" in page.headers["content-security-policy"]


def test_openai_client_with_a_wrong_key_gets_authentication_error(guarded):
    client = OpenAI(base_url=guarded.url + "/v1", api_key="not-the-key", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    good = OpenAI(base_url=guarded.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    assert "smollm2:135m" in [m.id for m in good.models.list().data]


def test_openai_client_through_a_foreign_host_name_gets_permission_denied(guarded):
    client = OpenAI(
        base_url=guarded.url + "/v1",
        api_key=KEY,
        max_retries=0,
        timeout=30,
        default_headers={"Host": "rebound.example"},
    )
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.models.list()
    assert info.value.body["code"] == "host_not_allowed"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:{port}", True),
        ("localhost:{port}", True),
        ("localhost", True),
        ("[::1]:{port}", True),
        ("127.0.0.2", True),
        ("aipc.test:{port}", True),  # --allowed-host
        (f"{socket.gethostname()}:{{port}}", True),
        ("evil.example:{port}", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example:{port}", False),
        ("aipc.test.evil.example", False),
        ("192.168.1.10:{port}", False),
        ("", False),
    ],
)
def test_host_header_guards_against_dns_rebinding(guarded, host, allowed):
    r = call(guarded, "GET", "/health", key=None, Host=host.format(port=guarded.port))
    if allowed:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "host_not_allowed"


def test_allowed_origin_gets_cors_headers(guarded):
    r = call(guarded, "GET", "/v1/models", Origin=GOOD_ORIGIN)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == GOOD_ORIGIN
    preflight = call(
        guarded,
        "OPTIONS",
        "/v1/chat/completions",
        key=None,
        Origin=GOOD_ORIGIN,
        **{"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == GOOD_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    assert "POST" in preflight.headers["access-control-allow-methods"]


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost:5174", "null", "https://localhost:5173"])
def test_other_origins_get_no_cors_headers_and_are_refused(guarded, origin):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("OPTIONS", "/v1/models")):
        r = call(guarded, method, path, Origin=origin, **{"Access-Control-Request-Method": "POST"})
        assert r.status_code == 403, (method, r.text)
        assert "access-control-allow-origin" not in r.headers
        assert r.json()["error"]["code"] == "origin_not_allowed"


def test_the_page_own_origin_is_allowed_without_cors_headers(guarded):
    origin = guarded.url  # the chat page served by this server calls it from its own origin
    r = call(guarded, "POST", "/v1/chat/completions", Origin=origin)
    assert r.status_code == 200, r.text
    assert "access-control-allow-origin" not in r.headers


def test_no_wildcard_cors_without_allowed_origins(model):
    with LiveServer(ServerSettings(), model) as live:
        r = call(live, "GET", "/v1/models", key=None, Origin="http://example.com")
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        assert call(live, "GET", "/v1/models", key=None).status_code == 200  # no key configured: open on loopback


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without an API key"),
        (["--host", "192.168.1.10"], "refusing to listen on 192.168.1.10 without an API key"),
        (["--allowed-origin", "*"], "--allowed-origin takes an origin"),
        (["--parallel", "0"], "--parallel must be an integer >= 1"),
        (["--api-key", "short"], "--api-key must be at least 8"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_unsafe_or_bad_settings_are_refused_at_start_up(args, fragment):
    result = run_cli("serve", *args, env={"AIPC_API_KEY": ""}, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
