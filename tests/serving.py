"""Shared by the server and chat tests: the embedded model's int4 bundle, its samples as request
parts, and a real `phi4edge serve` process on a loopback port."""
from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from phi4edge.export import export_model
from phi4edge.models import EMBEDDED

from .conftest import PYTHON

SAMPLES = EMBEDDED / "samples"
SPEC = json.loads((SAMPLES / "samples.json").read_text())
IMAGE, AUDIO = SAMPLES / SPEC["image"]["file"], SAMPLES / SPEC["audio"]["file"]
TEXT_PROMPT, TEXT_ANSWER = "Count from three to seven.", "three four five six seven"


_EXPORTED: list[Path] = []   # every test module imports this fixture: export once per session, not per module


@pytest.fixture(scope="session")
def embedded_bundle(tmp_path_factory) -> Path:
    if not _EXPORTED:
        _EXPORTED.append(export_model(EMBEDDED / "checkpoint", tmp_path_factory.mktemp("served") / "embedded-int4",
                                      show_progress=False))
    return _EXPORTED[0]


def image_part(path: Path = IMAGE) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()}}


def audio_part(path: Path = AUDIO) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(),
                                                   "format": path.suffix[1:]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`phi4edge serve BUNDLE ARGS` on a free loopback port, until stop()."""

    def __init__(self, bundle: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen([*PYTHON, "-m", "phi4edge.cli", "serve", str(bundle), "--port",
                                             str(self.port), *args], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def healthy(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def stop(self) -> str:
        """Stop it as Ctrl-C would; its log, which must show a clean exit."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=30)
        text = self.log.read_text()
        assert code == 0 and "Traceback" not in text, text
        return text


def post(url: str, body: bytes, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    """A raw HTTP POST: (status, JSON body)."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
