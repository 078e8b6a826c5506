"""A small Hub-compatible HTTP server on 127.0.0.1 for upload/download tests with huggingface_hub's real client.

It implements what huggingface_hub 2.4 calls for create_repo, create_commit (regular uploads: content travels
base64 inside the NDJSON commit), repo info, tree listing and file downloads. Repositories live in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"files": {path: bytes}, "commits": [sha], "type": str}
        self.calls: list[tuple[str, str]] = []
        self.commit_count = 0
        self.lock = threading.Lock()
        self.fail_commits = False


def _split_repo(path: str, marker: str) -> tuple[str, str]:
    repo, _, rest = path.partition(marker)
    return repo, rest


class HubHandler(BaseHTTPRequestHandler):
    state: HubState

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # --- helpers -------------------------------------------------------------------------------------------
    def _json(self, code: int, payload, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def _repo_info(self, repo_id: str) -> dict:
        repo = self.state.repos[repo_id]
        return {"id": repo_id, "modelId": repo_id, "sha": repo["commits"][-1], "private": repo.get("private", False),
                "siblings": [{"rfilename": p} for p in sorted(repo["files"])], "tags": [], "downloads": 0, "likes": 0}

    # --- routes --------------------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        path = unquote(urlparse(self.path).path)
        self.state.calls.append(("POST", path))
        body = self._body()
        if path == "/api/repos/create":
            data = json.loads(body or b"{}")
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            url = f"{self._base()}/{repo_id}"
            with self.state.lock:
                if repo_id in self.state.repos:
                    return self._json(409, {"error": "You already created this model repo", "url": url})
                self.state.repos[repo_id] = {"files": {}, "commits": ["0" * 40], "private": data.get("private", False)}
            return self._json(200, {"url": url, "name": repo_id})
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        for kind in ("models", "datasets", "spaces"):
            prefix = f"/api/{kind}/"
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/preupload/" in rest:
                repo_id, _ = _split_repo(rest, "/preupload/")
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                   "oid": None} for f in files], "commitOid": self.state.repos[repo_id]["commits"][-1]})
            if "/commit/" in rest:
                repo_id, _ = _split_repo(rest, "/commit/")
                if self.state.fail_commits:
                    return self._json(500, {"error": "commit failed (test)"})
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                with self.state.lock:
                    repo = self.state.repos[repo_id]
                    for line in lines:
                        if line["key"] == "file":
                            value = line["value"]
                            content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                            repo["files"][value["path"]] = content
                        elif line["key"] == "deletedFile":
                            repo["files"].pop(line["value"]["path"], None)
                    self.state.commit_count += 1
                    sha = hashlib.sha1(f"{repo_id}-{self.state.commit_count}".encode()).hexdigest()
                    repo["commits"].append(sha)
                return self._json(200, {"commitUrl": f"{self._base()}/{repo_id}/commit/{sha}", "commitOid": sha,
                                        "pullRequestUrl": None, "success": True})
        return self._json(404, {"error": f"no route POST {path}"})

    def do_GET(self) -> None:  # noqa: N802
        self._get(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._get(send_body=False)

    def _get(self, send_body: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.state.calls.append(("GET" if send_body else "HEAD", path))
        for kind in ("models", "datasets", "spaces"):
            prefix = f"/api/{kind}/"
            if path.startswith(prefix):
                rest = path[len(prefix):]
                if "/tree/" in rest:
                    repo_id, tail = _split_repo(rest, "/tree/")
                    if repo_id not in self.state.repos:
                        return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    files = self.state.repos[repo_id]["files"]
                    return self._json(200, [{"type": "file", "path": p, "size": len(b),
                                             "oid": hashlib.sha1(b).hexdigest()} for p, b in sorted(files.items())])
                repo_id = rest.split("/revision/")[0]
                if repo_id not in self.state.repos:
                    return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return self._json(200, self._repo_info(repo_id))
        if "/resolve/" in path:
            repo_id, tail = _split_repo(path.lstrip("/"), "/resolve/")
            _, _, filename = tail.partition("/")
            repo = self.state.repos.get(repo_id)
            if repo is None:
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if filename not in repo["files"]:
                return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            content = repo["files"][filename]
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("ETag", f'"{hashlib.sha1(content).hexdigest()}"')
            self.send_header("X-Repo-Commit", repo["commits"][-1])
            self.end_headers()
            if send_body:
                self.wfile.write(content)
            return None
        return self._json(404, {"error": f"no route GET {path}"})


def start_hub_server() -> tuple[ThreadingHTTPServer, HubState, str]:
    state = HubState()
    handler = type("Handler", (HubHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, state, f"http://127.0.0.1:{server.server_address[1]}"
