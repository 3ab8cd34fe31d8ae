"""A fake Hugging Face Hub on 127.0.0.1: a real HTTP server that answers what `push_to_hub`, `upload_folder`,
`hf_hub_download`, `snapshot_download` and `from_pretrained` send (huggingface_hub 2.4, transformers 5.23).

Uploads are stored per repository and commit (content-addressed blobs under `root/blobs`, the latest snapshot of
each repository mirrored as plain files under `root/repos/<namespace>/<name>/`), and downloads are served back
from them, so a test can push, inspect what arrived, and load it back through `HF_ENDPOINT`.

Endpoints (ecosystem.md §9, plus the download side):

| request | reply |
|---|---|
| `POST /api/repos/create` | `{"url", "name", "id"}` (a bare name lands in the `fake-user` namespace) |
| `GET /api/whoami-v2` | a user named `fake-user` |
| `POST /api/validate-yaml` | `{"errors": [], "warnings": []}` |
| `POST /api/{type}s/{repo}/preupload/{rev}` | `uploadMode: "regular"` for every file (no LFS, no xet) |
| `POST /api/{type}s/{repo}/commit/{rev}` | applies the NDJSON `file`/`deletedFile`/`deletedFolder` lines |
| `GET /api/{type}s/{repo}[/revision/{rev}]` | repo info with `sha` and `siblings` |
| `GET /api/{type}s/{repo}/tree/{rev}[/{path}]` | the file listing (`recursive` honoured; one page) |
| `GET/HEAD /{repo}/resolve/{rev}/{path}` | the file, with `ETag`, `X-Repo-Commit`, `Content-Length` |

A missing file answers 404 with `X-Error-Code: EntryNotFound`, an unknown repository 404 with `RepoNotFound` and an
unknown revision 404 with `RevisionNotFound`, which is how huggingface_hub tells them apart. Anything else is
answered 404 and recorded in `FakeHub.unhandled`, so tests can assert that nothing unexpected was called.

Only stdlib: the server must work wherever the tests do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


DEFAULT_NAMESPACE = "fake-user"
REPO_TYPES = ("model", "dataset", "space")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
# Probes huggingface_hub sends that the real Hub may answer 404 to; not worth recording as unhandled.
IGNORED_PROBES = ("/api/agent-harnesses",)


def git_blob_sha(data: bytes) -> str:
    """The git blob id of `data` (what the Hub reports as `oid`/ETag for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    # commit sha -> {path: blob sha}; commits[-1] is the head of `main`.
    manifests: dict[str, dict[str, str]] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)

    @property
    def head(self) -> str | None:
        return self.commits[-1] if self.commits else None


class FakeHub:
    """The server and its store. Use as a context manager, or call `start()`/`stop()`.

    Example:

    ```python
    with FakeHub(tmp_path / "hub") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_fake"}
        ...  # push in a subprocess with `env`
        assert "model.safetensors" in hub.files("fake-user/tiny")
    ```
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "blobs").mkdir(exist_ok=True)
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []

    # ----------------------------------------------------------------------------------------------------------
    # Lifecycle
    # ----------------------------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            fake_hub = hub

        # Port 0: the OS picks a free port, so parallel test runs never collide.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running; call start() or use it as a context manager.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self, token: str = "hf_fake_token") -> dict[str, str]:
        """Environment for a child process that should talk to this server instead of huggingface.co."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": token,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            # A cache of its own: downloads from one test's server never meet another test's repos of the same name.
            "HF_HUB_CACHE": str(self.root / "client-cache"),
        }

    # ----------------------------------------------------------------------------------------------------------
    # Inspection (for tests)
    # ----------------------------------------------------------------------------------------------------------
    def repo_ids(self, repo_type: str = "model") -> list[str]:
        return sorted(rid for (rtype, rid) in self._repos if rtype == repo_type)

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit messages of `repo_id`, oldest first."""
        repo = self._get_repo(repo_type, repo_id)
        return [repo.messages[sha] for sha in repo.commits]

    def files(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> dict[str, bytes]:
        """Path -> content of every file of `repo_id` at `revision` (default: the head of main)."""
        repo = self._get_repo(repo_type, repo_id)
        sha = revision or repo.head
        if sha is None:
            return {}
        if sha not in repo.manifests:
            raise KeyError(f"{repo_id!r} has no commit {sha!r}; commits are {repo.commits}")
        return {path: self._blob(blob) for path, blob in sorted(repo.manifests[sha].items())}

    def repo_dir(self, repo_id: str) -> Path:
        """The plain-file mirror of the latest snapshot of `repo_id`."""
        return self.root / "repos" / repo_id

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"FakeHub has no {repo_type} repo {repo_id!r}; it has {sorted(self._repos)}") from None

    # ----------------------------------------------------------------------------------------------------------
    # Store
    # ----------------------------------------------------------------------------------------------------------
    def _blob(self, sha: str) -> bytes:
        return (self.root / "blobs" / sha).read_bytes()

    def _put_blob(self, data: bytes) -> str:
        sha = git_blob_sha(data)
        path = self.root / "blobs" / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def create_repo(self, repo_type: str, repo_id: str) -> tuple[_Repo, bool]:
        with self._lock:
            key = (repo_type, repo_id)
            created = key not in self._repos
            if created:
                self._repos[key] = _Repo(repo_id=repo_id, repo_type=repo_type)
        if created:
            # The real Hub starts every repository with one commit holding `.gitattributes`, so `main` exists (and a
            # README lookup is an EntryNotFound, not a RevisionNotFound).
            content = base64.b64encode(GITATTRIBUTES).decode()
            self.commit(
                repo_type,
                repo_id,
                [
                    {"key": "header", "value": {"summary": "initial commit"}},
                    {"key": "file", "value": {"path": ".gitattributes", "content": content, "encoding": "base64"}},
                ],
            )
        return self._repos[key], created

    def commit(self, repo_type: str, repo_id: str, lines: list[dict[str, Any]]) -> str:
        """Apply one NDJSON commit; return the new commit sha."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            manifest = dict(repo.manifests[repo.head]) if repo.head else {}
            summary = ""
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise ValueError(
                            f"unsupported file encoding {value.get('encoding')!r} for {value.get('path')}"
                        )
                    manifest[value["path"]] = self._put_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    manifest.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    manifest = {p: b for p, b in manifest.items() if not p.startswith(prefix)}
                else:
                    # lfsFile / copies would need the LFS batch API, which preupload never asks for.
                    raise ValueError(f"FakeHub does not support commit lines of kind {key!r}")
            seed = json.dumps([repo.head, sorted(manifest.items()), summary, time.time_ns()]).encode()
            sha = hashlib.sha1(seed).hexdigest()
            repo.manifests[sha] = manifest
            repo.commits.append(sha)
            repo.messages[sha] = summary
            self._mirror(repo)
            return sha

    def _mirror(self, repo: _Repo) -> None:
        target = self.repo_dir(repo.repo_id) if repo.repo_type == "model" else self.root / "repos" / repo.repo_type
        if target.exists():
            shutil.rmtree(target)
        for path, blob in repo.manifests[repo.head].items():
            out = target / path
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(self._blob(blob))

    def resolve(self, repo: _Repo, revision: str) -> str | None:
        """Commit sha for a branch name (only `main`) or a full sha; None if unknown."""
        if revision == "main":
            return repo.head
        return revision if revision in repo.manifests else None


class _HubHandler(BaseHTTPRequestHandler):
    """Routes one request. `fake_hub` is set on a per-server subclass."""

    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: pytest shows failures, and `FakeHub.requests` records the traffic

    # ---- plumbing -----------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head_only: bool = False
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, head_only: bool = False) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head_only=head_only)

    def _unhandled(self, method: str) -> None:
        if not self.path.startswith(IGNORED_PROBES):
            self.fake_hub.unhandled.append((method, self.path))
        self._error(404, None, f"FakeHub: no route for {method} {self.path}")

    # ---- verbs -------------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._route("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _route(self, method: str) -> None:
        hub = self.fake_hub
        hub.requests.append((method, self.path))
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        body = self._body() if method == "POST" else b""
        try:
            if parts[:1] == ["api"]:
                return self._api(method, parts[1:], query, body)
            return self._resolve(method, parts)
        except Exception as err:  # a bug in a handler must show up as a 500, not a hang
            self._error(500, None, f"FakeHub error: {type(err).__name__}: {err}")

    # ---- /api/... ----------------------------------------------------------------------------------------------
    def _api(self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes) -> None:
        hub = self.fake_hub
        if method == "GET" and parts == ["whoami-v2"]:
            return self._json(200, {"type": "user", "name": DEFAULT_NAMESPACE, "orgs": [], "auth": {}})
        if method == "POST" and parts == ["repos", "create"]:
            payload = json.loads(body or b"{}")
            repo_type = payload.get("type") or "model"
            namespace = payload.get("organization") or DEFAULT_NAMESPACE
            repo_id = f"{namespace}/{payload['name']}"
            _, created = hub.create_repo(repo_type, repo_id)
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            status = 200 if created else 409  # the Hub answers 409 when it exists; exist_ok=True accepts it
            return self._json(status, {"url": f"{hub.url}/{prefix}{repo_id}", "name": repo_id, "id": repo_id})
        if method == "POST" and parts == ["validate-yaml"]:
            return self._json(200, {"errors": [], "warnings": []})
        if len(parts) >= 3 and parts[0].rstrip("s") in REPO_TYPES:
            repo_type = parts[0][:-1]
            repo_id = f"{parts[1]}/{parts[2]}"
            rest = parts[3:]
            repo = hub._repos.get((repo_type, repo_id))
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id!r} not found")
            if method == "POST" and rest[:1] == ["preupload"]:
                files = json.loads(body)["files"]
                head = repo.manifests.get(repo.head, {}) if repo.head else {}
                return self._json(
                    200,
                    {
                        "files": [
                            {
                                "path": f["path"],
                                "uploadMode": "regular",
                                "shouldIgnore": False,
                                "oid": head.get(f["path"]),
                            }
                            for f in files
                        ],
                        "commitOid": repo.head,
                    },
                )
            if method == "POST" and rest[:1] == ["commit"]:
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                sha = hub.commit(repo_type, repo_id, lines)
                prefix = "" if repo_type == "model" else f"{repo_type}s/"
                return self._json(
                    200, {"commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{sha}", "commitOid": sha, "success": True}
                )
            if method == "GET" and (not rest or rest[:1] == ["revision"]):
                revision = rest[1] if len(rest) > 1 else "main"
                return self._info(repo, revision)
            if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
                recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                return self._tree(repo, rest[1], "/".join(rest[2:]), recursive)
        return self._unhandled(method)

    def _info(self, repo: _Repo, revision: str) -> None:
        sha = self.fake_hub.resolve(repo, revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Revision {revision!r} not found in {repo.repo_id!r}")
        manifest = repo.manifests[sha]
        return self._json(
            200,
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": sha,
                "private": False,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(manifest)],
            },
        )

    def _tree(self, repo: _Repo, revision: str, prefix: str, recursive: bool) -> None:
        sha = self.fake_hub.resolve(repo, revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Revision {revision!r} not found in {repo.repo_id!r}")
        base = prefix.strip("/") + "/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, blob in sorted(repo.manifests[sha].items()):
            if not path.startswith(base):
                continue
            rel = path[len(base) :]
            if not recursive and "/" in rel:
                folder = base + rel.split("/")[0]
                entries[folder] = {
                    "type": "directory",
                    "path": folder,
                    "oid": hashlib.sha1(folder.encode()).hexdigest(),
                }
                continue
            size = (self.fake_hub.root / "blobs" / blob).stat().st_size
            entries[path] = {"type": "file", "path": path, "size": size, "oid": blob}
        if recursive:  # the Hub lists the folders too
            for path in list(entries):
                for i in range(path.count("/")):
                    folder = "/".join(path.split("/")[: i + 1])
                    if folder.startswith(base.rstrip("/")) and folder != base.rstrip("/"):
                        entries.setdefault(
                            folder,
                            {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()},
                        )
        return self._json(200, list(entries.values()))

    # ---- /{repo}/resolve/{rev}/{path} --------------------------------------------------------------------------
    def _resolve(self, method: str, parts: list[str]) -> None:
        hub = self.fake_hub
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = parts[0][:-1], parts[1:]
        if method not in ("GET", "HEAD") or len(parts) < 5 or parts[2] != "resolve":
            return self._unhandled(method)
        head_only = method == "HEAD"
        repo_id, revision, path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        repo = hub._repos.get((repo_type, repo_id))
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id!r} not found", head_only)
        sha = hub.resolve(repo, revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Revision {revision!r} not found", head_only)
        blob = repo.manifests[sha].get(path)
        if blob is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}", head_only)
        data = hub._blob(blob)
        headers = {"ETag": f'"{blob}"', "X-Repo-Commit": sha, "Content-Type": "application/octet-stream"}
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes=") and not head_only:
            start_s, _, end_s = range_header[len("bytes=") :].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers)
        return self._send(200, data, headers, head_only=head_only)


REPO_ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, env: dict[str, str] | None = None, cwd: str | Path = REPO_ROOT, timeout: int = 300) -> str:
    """Run `code` in a fresh interpreter with this repository importable and `env` on top of ours; return stdout.

    `HF_ENDPOINT`/`HF_TOKEN` are read by huggingface_hub at import time, so anything that talks to a `FakeHub` runs
    in a child started with `hub.env()`; the test process's own environment (offline, see conftest) is untouched.
    Raises `AssertionError` with the child's output when it exits non-zero.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    child_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=str(cwd),
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc.stdout


__all__ = ["DEFAULT_NAMESPACE", "REPO_ROOT", "FakeHub", "git_blob_sha", "run_python"]
