"""Server fixtures: `fastcot serve` subprocesses on free loopback ports, one per model for the
whole session, with the official `openai` client.

Each server binds 127.0.0.1, port 0 (the kernel picks a free port; the server's startup line
says which). Servers are terminated by the fixtures, and die with the test process anyway
(the parent-death signal), so none outlives a run. `plain_server` serves a tiny Llama with
the byte tokenizer and requires an API key; `reasoning_server` serves the same weights with
`<think>` tokens (see checkpoints.py).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

if any(importlib.util.find_spec(name) is None
       for name in ("fastapi", "uvicorn", "prometheus_client", "openai", "transformers")):
    collect_ignore_glob = ["test_*.py"]  # the serve extra and openai are in `dev`

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key"
STARTUP_TIMEOUT_S = 180
ENGINE_ARGS = ["--device", "cpu", "--max-model-len", "256", "--num-kv-blocks", "192", "--block-size", "16",
               "--max-num-seqs", "64"]


def _die_with_parent():
    """Runs in the child before exec: SIGTERM when the test process dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class RemoteServer:
    """`fastcot serve` in a subprocess; its log goes to `log_path`."""

    def __init__(self, model: Path | str, args: list[str], log_path: Path, api_key: str | None = None):
        self.api_key = api_key
        self.log_path = log_path
        command = [sys.executable, "-m", "fastcot", "serve", str(model), "--host", "127.0.0.1", "--port", "0",
                   *ENGINE_ARGS, *args]
        if api_key:
            command += ["--api-key", api_key]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.url = None

    def wait_ready(self) -> RemoteServer:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            if self.url is None:
                found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.log())
                self.url = found and found.group(1)
            elif self.get("/health")[0] == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start within {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except urllib.error.URLError:
            return 0, b""

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path, timeout=5)

    def post_json(self, path: str, body, *, api_key: str | None = "default") -> tuple[int, dict]:
        key = self.api_key if api_key == "default" else api_key
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, raw = self.request("POST", path, data, headers)
        return status, json.loads(raw)

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        status, raw = self.get("/metrics")
        assert status == 200
        return {s.name: s.value for family in text_string_to_metric_families(raw.decode()) for s in family.samples}

    def client(self, api_key: str | None = "default", *, asynchronous: bool = False):
        import openai

        key = self.api_key if api_key == "default" else api_key
        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        return cls(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._log.close()


@pytest.fixture(scope="session")
def checkpoint_dirs(tmp_path_factory) -> dict[str, Path]:
    import checkpoints

    return checkpoints.build(tmp_path_factory.mktemp("serve-plain"), tmp_path_factory.mktemp("serve-reasoning"))


class _Servers:
    """Both servers start at the first use of either, so their startups overlap."""

    def __init__(self, dirs: dict[str, Path], log_dir: Path):
        self.servers = {
            "plain": RemoteServer(dirs["plain"], ["--served-model-name", "tiny", "tiny-alias"],
                                  log_dir / "plain.log", api_key=API_KEY),
            "reasoning": RemoteServer(dirs["reasoning"], ["--served-model-name", "tiny-reasoner"],
                                      log_dir / "reasoning.log"),
        }
        self._ready = {name: threading.Event() for name in self.servers}

    def get(self, name: str) -> RemoteServer:
        server = self.servers[name]
        if not self._ready[name].is_set():
            server.wait_ready()
            self._ready[name].set()
        return server

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="session")
def _servers(checkpoint_dirs, tmp_path_factory):
    servers = _Servers(checkpoint_dirs, tmp_path_factory.mktemp("serve-logs"))
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def plain_server(_servers) -> RemoteServer:
    return _servers.get("plain")


@pytest.fixture(scope="session")
def reasoning_server(_servers) -> RemoteServer:
    return _servers.get("reasoning")


@pytest.fixture(scope="session")
def offline(checkpoint_dirs):
    """`fastcot.LLM` on the same checkpoints and engine settings, in this process."""
    import fastcot

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = fastcot.LLM(str(checkpoint_dirs[name]), device="cpu", max_model_len=256, num_kv_blocks=192,
                                      block_size=16, max_num_seqs=64, gc_freeze=False)
        return cache[name]

    return get
