"""The Docker files: the compose file resolves with `docker compose config`, and the image, the compose
file, the serve command and the README agree on the environment."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ml_backend.commands import serve

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
REQUIRED = {"LABEL_STUDIO_PASSWORD": "pw-for-test", "LABEL_STUDIO_USER_TOKEN": "token-for-test"}


def _compose_command() -> list[str]:
    """`docker compose` (v2 plugin) where it works, else the standalone `docker-compose`."""
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed (the compose file is checked where it is)")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip(
        "docker is installed without compose: install the compose plugin or `apt-get install docker-compose`"
    )


def _config(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(ROOT), **extra_env}
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    completed = _config(REQUIRED)
    assert completed.returncode == 0, completed.stderr
    return yaml.safe_load(completed.stdout)


def test_compose_wires_label_studio_and_the_backend(compose) -> None:
    services = compose["services"]
    assert set(services) == {"label-studio", "decomp-backend"}
    studio, backend = services["label-studio"], services["decomp-backend"]
    assert studio["image"] == "heartexlabs/label-studio:1.23.2"

    studio_env, backend_env = studio["environment"], backend["environment"]
    assert studio_env["ML_BLOCK_LOCAL_IP"] == "false"
    assert studio_env["SSRF_PROTECTION_ENABLED"] == "false"
    assert studio_env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert studio_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert studio_env["LABEL_STUDIO_PASSWORD"] == "pw-for-test"

    assert backend_env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert backend_env["LABEL_STUDIO_API_KEY"] == "token-for-test"
    assert backend_env["MODEL_DIR"] == "/data/models"
    assert (
        backend_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
        == studio_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    )
    assert Path(backend["build"]["context"]).resolve() == ROOT
    assert (ROOT / backend["build"]["dockerfile"]).is_file()
    assert "label-studio" in str(backend["depends_on"])

    volumes = [str(v) for v in backend["volumes"]]
    assert any(v.startswith("decomp-models:/data/models") for v in volumes)
    assert {"decomp-models", "label-studio-data"} <= set(compose["volumes"])
    for service in (studio, backend):
        assert all(str(port).startswith("127.0.0.1:") for port in service["ports"])


def test_compose_refuses_to_start_without_a_password() -> None:
    completed = _config({"LABEL_STUDIO_USER_TOKEN": "token-for-test"})
    assert completed.returncode != 0
    assert "set LABEL_STUDIO_PASSWORD" in completed.stderr


def test_every_backend_variable_is_read_by_serve_and_documented(compose) -> None:
    readme = (DOCKER / "README.md").read_text()
    served = {name for variables, _default, _help in serve.OPTIONS.values() for name in variables}
    read_by_image_loader = {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"}
    for name in compose["services"]["decomp-backend"]["environment"]:
        assert name in served | read_by_image_loader, f"{name} is set for the backend but nothing reads it"
        assert f"`{name}`" in readme, f"{name} is not documented in docker/README.md"


def test_the_image_installs_the_project_and_runs_serve() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "MODEL_DIR=/data/models" in dockerfile
    assert 'VOLUME ["/data/models"]' in dockerfile
    assert 'CMD ["label-studio-decomp", "serve"]' in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.MULTILINE), "the backend should not run as root"
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / copied).exists(), f"the Dockerfile copies {copied}, which the repository lacks"


def test_the_build_context_holds_only_the_package_sources() -> None:
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "everything is left out first (the 5 GB .venv, .git, runs)"
    included = {rule[1:] for rule in rules if rule.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "ml_backend/", "adapters/"}
