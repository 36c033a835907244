"""A hub id as a user meets it: ``agentgym train --model.name ORG/NAME`` on an online machine downloads
the model into the standard Hugging Face cache and trains, with no offline switch set anywhere by the
package; offline and absent, it fails in under 2 s with the download command.

The hub is a real HTTP server on 127.0.0.1 speaking the part of the Hugging Face hub API that
``huggingface_hub`` uses to download a repository (``HF_ENDPOINT`` points at it): the revision info,
the file tree, and HEAD / GET of ``/{repo}/resolve/{revision}/{file}``. It serves the tiny model's files."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO_ID = "agentgym-test/tiny-chat"
AGENTGYM = Path(sys.executable).parent / "agentgym"


class HubServer:
    """Serves the files of ``folder`` as the hub repository ``repo_id`` at one commit."""

    def __init__(self, repo_id: str, folder: Path):
        self.repo_id = repo_id
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        digest = hashlib.sha1(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in self.files.items()},
                                         sort_keys=True).encode())
        self.sha = digest.hexdigest()
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, value) -> None:
                self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

            def _route(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                api = f"/api/models/{hub.repo_id}"
                if path.startswith(api + "/tree/"):
                    return self._json([{"type": "file", "path": name, "size": len(body),
                                        "oid": hashlib.sha1(body).hexdigest()} for name, body in hub.files.items()])
                if path == api or path.startswith(api + "/revision/"):
                    return self._json({"id": hub.repo_id, "modelId": hub.repo_id, "sha": hub.sha, "private": False,
                                       "siblings": [{"rfilename": name} for name in hub.files]})
                prefix = f"/{hub.repo_id}/resolve/"
                if path.startswith(prefix):
                    revision, _, name = path[len(prefix):].partition("/")
                    if revision in ("main", hub.sha) and name in hub.files:
                        body = hub.files[name]
                        return self._send(200, body, {"X-Repo-Commit": hub.sha,
                                                      "ETag": f'"{hashlib.sha256(body).hexdigest()}"'})
                self._send(404, b'{"error": "Repository or entry not found"}',
                           {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"})

            do_GET = do_HEAD = _route

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tiny_model_path):
    server = HubServer(REPO_ID, Path(tiny_model_path))
    yield server
    server.close()


def _user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, a fresh HF_HOME."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME", "TRANSFORMERS_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1", **extra)
    return env


def test_a_hub_id_downloads_into_the_cache_and_trains(hub, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [str(AGENTGYM), "train", "--model.name", REPO_ID, "--train.updates", "1", "--env.id", "agentgym/Echo-v0",
         "--env.group_size", "2", "--env.eval_tasks", "0", "--rollout.max_new_tokens", "4", "--train.run_dir", str(run),
         "--train.progress", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_user_env(tmp_path, HF_ENDPOINT=hub.url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"model: downloading {REPO_ID} from {hub.url}" in proc.stderr
    snapshot = tmp_path / "hf-home" / "hub" / ("models--" + REPO_ID.replace("/", "--")) / "snapshots" / hub.sha
    assert {p.name for p in snapshot.iterdir()} == set(hub.files)  # the standard cache layout, every file
    assert (snapshot / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert ("GET", f"/{REPO_ID}/resolve/{hub.sha}/model.safetensors") in hub.requests
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == REPO_ID and summary["updates"] == 1
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["phase"] == "train"]
    assert len(train) == 1 and train[0]["no_gradient"] == 0.0 and train[0]["loss"] > 0

    # The same command again downloads nothing: the cache is read (the server only answers metadata).
    hub.requests.clear()
    again = subprocess.run([str(AGENTGYM), "train", "--help", "--model.name", REPO_ID], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env=_user_env(tmp_path, HF_ENDPOINT=hub.url))
    assert again.returncode == 0, again.stderr[-2000:]
    assert not [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]


def test_offline_and_not_cached_fails_fast_with_the_download_command(tmp_path):
    """Under 2 s of the process's CPU time (its wall time is that on an idle machine; on a shared,
    loaded one the wall clock measures the neighbours too)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([str(AGENTGYM), "train", "--model.name", "agentgym-test/not-downloaded",
                           "--train.run_dir", str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=_user_env(tmp_path, HF_HUB_OFFLINE="1"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    elapsed = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("agentgym train: model.name: 'agentgym-test/not-downloaded' is not in the Hugging "
                                   "Face cache and HF_HUB_OFFLINE=1; download it first (hf download "
                                   "agentgym-test/not-downloaded) or unset HF_HUB_OFFLINE")
    assert elapsed < 2.0, elapsed
    assert not (tmp_path / "run").exists()


def test_the_package_never_switches_offline_mode_on():
    """Importing and using the package leaves HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as the user had them."""
    code = ("import os, agentgym, agentgym.train, agentgym.agents.models, agentgym.agents.transformers_policy, "
            "agentgym.report.offsets\n"
            "agentgym.report.offsets.load_tokenizer('tiny')\n"
            "print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE'))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["None", "None"]
