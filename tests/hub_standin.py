"""A local stand-in for the Hugging Face Hub: serves one folder as a model repository over HTTP.

Enough of the hub's API for ``huggingface_hub.snapshot_download`` and diffusers' ``download`` (model info,
file metadata, file bodies), so that a download goes through the real client code, offline. Point
``HF_ENDPOINT`` at ``serve(...)``'s address before huggingface_hub is imported (a fresh process).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


def _handler(repo: str, folder: Path) -> type[BaseHTTPRequestHandler]:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            if path.startswith(f"/api/models/{repo}/tree/"):  # list_repo_tree: every file with its size
                tree = [{"type": "file", "path": f, "size": (folder / f).stat().st_size, "oid": SHA} for f in files]
                return self._send(json.dumps(tree).encode(), "application/json", body)
            if path.startswith(f"/api/models/{repo}"):
                info = {"id": repo, "sha": SHA, "siblings": [{"rfilename": f} for f in files], "private": False}
                return self._send(json.dumps(info).encode(), "application/json", body)
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                name = path[len(prefix) :].split("/", 1)[1]
                if name in files:
                    data = (folder / name).read_bytes()
                    return self._send(data, "application/octet-stream", body, hashlib.sha256(data).hexdigest())
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send(self, data: bytes, kind: str, body: bool, etag: str | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Repo-Commit", SHA)
            if etag is not None:
                self.send_header("ETag", f'"{etag}"')
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler


@contextmanager
def serve(repo: str, folder: Path) -> Iterator[str]:
    """Serve ``folder`` as model ``repo`` on a free local port; yields the endpoint URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(repo, folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
