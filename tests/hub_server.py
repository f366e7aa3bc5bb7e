"""A Hugging Face hub look-alike on loopback: serves local folders as model repositories.

It answers the calls `huggingface_hub` makes for `model_info` and `snapshot_download` (the repository's
metadata with its file list, and `resolve/<revision>/<file>` downloads with the commit and ETag headers), so
aipc's hub code runs unpatched against it through `HF_ENDPOINT`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.requests: list[str] = []
        self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub.handle(self, body=False)

            def do_GET(self) -> None:
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def handle(self, req: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.requests.append(f"{req.command} {path}")
        if path.startswith("/api/models"):
            return self._info(req, path, body)
        for repo in self.repos:
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                _revision, _, filename = path[len(prefix) :].partition("/")
                return self._file(req, repo, filename, body)
        self._send(req, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)

    def _info(self, req, path: str, body: bool) -> None:
        rest = path[len("/api/models/") :] if path.startswith("/api/models/") else ""
        repo = next((r for r in self.repos if rest == r or rest.startswith(r + "/")), None)
        if repo is None:
            return self._send(req, 200 if not rest else 404, b"[]" if not rest else b'{"error": "not found"}', {}, body)
        sha = self.commits[repo]
        root = self.repos[repo]
        info = {
            "id": repo,
            "modelId": repo,
            "sha": sha,
            "private": False,
            "siblings": [{"rfilename": f, "size": (root / f).stat().st_size} for f in self._files(repo)],
        }
        self._send(req, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    def _file(self, req, repo: str, filename: str, body: bool) -> None:
        target = self.repos[repo] / filename
        if not target.is_file():
            return self._send(req, 404, b"not found", {"X-Error-Code": "EntryNotFound"}, body)
        data = target.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{etag}"',
            "X-Repo-Commit": self.commits[repo],
            "X-Linked-Etag": f'"{etag}"',
            "X-Linked-Size": str(len(data)),
        }
        self._send(req, 200, data, headers, body)

    @staticmethod
    def _send(req, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)
