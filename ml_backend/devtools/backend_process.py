"""The DECOMP backend (``label-studio-decomp serve``) as a local child process, for the demo and the
end-to-end tests: started on 127.0.0.1 with the Label Studio it talks to, ready when ``/health`` answers,
stopped by its PID like :class:`~ml_backend.devtools.label_studio.LocalLabelStudio`."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from ml_backend.devtools import LOOPBACK, LocalService, ServiceProcess, reports_status_up

# Inherited values would silently switch authentication on or off behind the caller's back.
_AUTH_VARIABLES = ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` header value of HTTP Basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class BackendProcess(LocalService):
    """``label-studio-decomp serve`` on ``127.0.0.1:<port>`` with its state under ``model_dir``.

    ``label_studio_url`` and ``api_key`` (legacy token or personal access token) let the backend read
    images and annotations from Label Studio. ``basic_auth=(user, password)`` makes every route ask for
    HTTP Basic credentials. ``port=None`` picks a free port on the first start and keeps it across restarts,
    so the URL Label Studio knows stays valid.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        label_studio_url: str,
        api_key: str,
        port: int | None = None,
        basic_auth: tuple[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        python: str | None = None,
        start_timeout: float = 120.0,
        stop_grace: float = 15.0,
        report: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(port=port, stop_grace=stop_grace)
        self.model_dir = Path(model_dir).resolve()
        self.label_studio_url = label_studio_url
        self.api_key = api_key
        self.basic_auth = basic_auth
        self.extra_env = dict(extra_env or {})
        self.log_path = Path(log_path) if log_path is not None else self.model_dir / "backend.log"
        self.python = python or sys.executable
        self.start_timeout = start_timeout
        self.report = report

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers that pass the backend's basic auth (empty when it is off)."""
        return {"Authorization": basic_auth_header(*self.basic_auth)} if self.basic_auth else {}

    def start(self) -> BackendProcess:
        if self.running:
            return self
        self._claim_port("the backend")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        service = ServiceProcess(
            "the DECOMP backend",
            [
                self.python,
                "-m",
                "ml_backend.cli",
                "serve",
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--model-dir",
                str(self.model_dir),
            ],
            env=self._env(),
            log_path=self.log_path,
            health_url=f"{self.url}/health",
            is_ready=reports_status_up,
            health_headers=self.auth_headers,
        )
        if self.report is not None:
            self.report(f"starting the DECOMP backend on {self.url} (models in {self.model_dir})")
        self._launch(service, self.start_timeout)
        return self

    def _env(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name not in _AUTH_VARIABLES}
        env.update(
            LABEL_STUDIO_URL=self.label_studio_url,
            LABEL_STUDIO_API_KEY=self.api_key,
            MODEL_DIR=str(self.model_dir),
        )
        if self.basic_auth is not None:
            env.update(BASIC_AUTH_USER=self.basic_auth[0], BASIC_AUTH_PASS=self.basic_auth[1])
        env.update(self.extra_env)
        return env
