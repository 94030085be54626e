"""Start the BentoML service as a subprocess on a free loopback port, and stop it.

Used by ``make demo`` and the integration tests; it binds 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

SERVICE_TARGET = "serving.service:ImageClassifier"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """``bentoml serve`` in its own process group, so stopping it stops its workers too."""

    def __init__(
        self,
        model_dir: str | Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        cwd: str | Path | None = None,
    ):
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.url = f"http://{self.host}:{self.port}"
        self.model_dir = Path(model_dir)
        self.extra_env = env or {}
        self.log_path = Path(log_path) if log_path else None
        self.cwd = Path(cwd) if cwd else Path(__file__).resolve().parent.parent
        self.process: subprocess.Popen | None = None
        self._log_handle = None
        self._home: tempfile.TemporaryDirectory | None = None

    def start(self) -> ServiceProcess:
        env = {**os.environ, "MODEL_DIR": str(self.model_dir.resolve()), **self.extra_env}
        if "BENTOML_HOME" not in self.extra_env:
            # Each `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts, so two
            # servers sharing a home corrupt each other's /metrics. Each process gets its own home.
            self._home = tempfile.TemporaryDirectory(prefix="bentoml-home-")
            env["BENTOML_HOME"] = self._home.name
        bentoml = Path(sys.executable).with_name("bentoml")
        command = [str(bentoml), "serve", SERVICE_TARGET, "--host", self.host, "--port", str(self.port)]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=env,
            stdout=self._log_handle or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logger.info("started %s on %s (pid %d)", SERVICE_TARGET, self.url, self.process.pid)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/readyz`` until it returns 200; raise if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"the service exited with code {self.process.returncode} before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the service on {self.url} was not ready after {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        """Send SIGTERM to the process group, then SIGKILL if it has not exited in ``timeout`` s."""
        if self.process is None or self.process.poll() is not None:
            self._close_log()
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("the service did not stop in %.0f s; killing it", timeout)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._home is not None:
            self._home.cleanup()
            self._home = None

    def __enter__(self) -> ServiceProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
