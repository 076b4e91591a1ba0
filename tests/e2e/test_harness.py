"""The local Label Studio harness: the supervised child process (fast tests with stand-in programs) and a real
Label Studio 1.23 (marked e2e): authentication, a brush project with a proposals control, local-file tasks,
restart on the same data directory, and nothing left running after stop."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from ml_backend.devtools import ServiceError, ServiceProcess, free_port, live_group_members, local_http_client
from ml_backend.devtools import label_studio as harness
from ml_backend.devtools.backend_process import BackendProcess, basic_auth_header
from ml_backend.devtools.label_studio import (
    CREDENTIALS_FILE,
    SERVER_FILE,
    LabelStudioCredentials,
    LocalLabelStudio,
    ensure_label_studio,
    label_studio_env,
)

# A stand-in service: answers /health like Label Studio and writes its pid to a file; with --stuck-child it
# also has a child that ignores SIGTERM (as a stuck worker would), so only SIGKILL of the group ends it.
SERVICE = textwrap.dedent(
    """
    import http.server, json, os, subprocess, sys
    port, pid_file = int(sys.argv[1]), sys.argv[2]
    pids = {"parent": os.getpid()}
    if "--stuck-child" in sys.argv:
        pids["child"] = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]).pid
    with open(pid_file, "w") as out:
        json.dump(pids, out)
    print("stand-in service listening", flush=True)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status": "UP"}')

    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


def _stand_in(tmp_path: Path, source: str = SERVICE, *options: str) -> tuple[ServiceProcess, Path]:
    port = free_port()
    pid_file = tmp_path / "pids.json"
    service = ServiceProcess(
        "stand-in",
        [sys.executable, "-c", source, str(port), str(pid_file), *options],
        env=dict(os.environ),
        log_path=tmp_path / "service.log",
        health_url=f"http://127.0.0.1:{port}/health",
    )
    return service, pid_file


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- the supervised process ----------------------------------------------------------------------------


def test_stop_kills_the_whole_group_including_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    service, pid_file = _stand_in(tmp_path, SERVICE, "--stuck-child")
    service.start(timeout=30)
    pids = json.loads(pid_file.read_text())
    assert service.running and service.pid == pids["parent"]
    assert sorted(live_group_members(service.pid)) == sorted(pids.values())
    service.stop(grace=0.5)
    assert not _alive(pids["parent"]) and not _alive(pids["child"])
    assert not live_group_members(pids["parent"])
    assert service.pid is None and not service.running
    service.stop()  # idempotent


def test_a_service_ends_when_its_parent_dies_without_cleaning_up(tmp_path: Path) -> None:
    """Closing the terminal or kill -9 ends the parent without unwinding; its services must not linger."""
    parent_source = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from ml_backend.devtools import ServiceProcess
        port = {free_port()}
        argv = [sys.executable, "-c", {SERVICE!r}, str(port), {str(tmp_path / "p")!r}]
        service = ServiceProcess("stand-in", argv, env=dict(os.environ),
            log_path=Path({str(tmp_path / "s.log")!r}), health_url=f"http://127.0.0.1:{{port}}/health")
        service.start(timeout=30)
        print(service.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_source], stdout=subprocess.PIPE, text=True)
    try:
        service_pid = int(parent.stdout.readline())
        assert _alive(service_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(service_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(service_pid)


def test_a_missing_program_is_reported_before_anything_starts(tmp_path: Path) -> None:
    service = ServiceProcess(
        "ghost", ["no-such-program-here"], env={}, log_path=tmp_path / "log", health_url="http://127.0.0.1:1/"
    )
    with pytest.raises(ServiceError, match="could not run ghost: no-such-program-here is not an executable"):
        service.start(timeout=5)


def test_a_process_that_exits_early_is_reported_with_exit_code_and_log(tmp_path: Path) -> None:
    service, _ = _stand_in(tmp_path, "import sys; print('bad setting FOO=1'); sys.exit(3)")
    with pytest.raises(ServiceError, match=r"(?s)exited with code 3 .*bad setting FOO=1"):
        service.start(timeout=30)
    assert service.pid is None


def test_a_process_that_never_gets_ready_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    never_ready = "import json, os, sys, time; json.dump({'parent': os.getpid()}, open(sys.argv[2], 'w'))\n"
    never_ready += "time.sleep(600)"
    service, pid_file = _stand_in(tmp_path, never_ready)
    with pytest.raises(ServiceError, match="did not become ready .* within 1 s"):
        service.start(timeout=1)
    assert not _alive(json.loads(pid_file.read_text())["parent"])


def test_the_error_shows_only_the_log_of_the_latest_start(tmp_path: Path) -> None:
    (tmp_path / "service.log").write_text("old run: everything fine\n")
    service, _ = _stand_in(tmp_path, "print('new run: broken'); raise SystemExit(1)")
    with pytest.raises(ServiceError) as failure:
        service.start(timeout=30)
    assert "new run: broken" in str(failure.value) and "old run" not in str(failure.value)


def test_free_port_prefers_the_requested_port_unless_it_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert free_port(preferred=busy) != busy
    assert free_port(preferred=busy) == busy


# -- install, provisioning and settings (no server) ------------------------------------------------------


class _FakePip:
    """Stands in for subprocess.run in ensure_label_studio: records commands and fakes their effects."""

    def __init__(self, pip_exit_codes: list[int]) -> None:
        self.commands: list[list[str]] = []
        self.pip_exit_codes = pip_exit_codes

    def __call__(self, argv, check=False, **kwargs):
        self.commands.append(list(argv))
        code, stdout = 0, ""
        if argv[1:3] == ["-m", "venv"]:
            venv = Path(argv[3])
            (venv / "bin").mkdir(parents=True)
            (venv / "bin" / "python").touch()
        elif argv[1:4] == ["-m", "pip", "install"]:
            code = self.pip_exit_codes.pop(0)
            if code == 0:
                (Path(argv[0]).parent / "label-studio").touch()
        else:
            stdout = harness.LABEL_STUDIO_VERSION + "\n"
        return harness.subprocess.CompletedProcess(argv, code, stdout=stdout)


def test_label_studio_is_installed_once_and_an_interrupted_install_is_resumed(tmp_path, monkeypatch) -> None:
    fake = _FakePip(pip_exit_codes=[1, 0])
    monkeypatch.setattr(harness.subprocess, "run", fake)
    messages: list[str] = []
    with pytest.raises(ServiceError, match=r"pip install label-studio==1\.23\.2 failed \(exit code 1\)"):
        ensure_label_studio(cache_dir=tmp_path, python="/usr/bin/python3", report=messages.append)
    venv = tmp_path / "label-studio-1.23.2"
    assert [command[1:3] for command in fake.commands] == [["-m", "venv"], ["-m", "pip"]]
    assert fake.commands[0][0] == "/usr/bin/python3" and "label-studio==1.23.2" in fake.commands[1]
    assert not (venv / ".label-studio-decomp-ready").exists()

    install = ensure_label_studio(cache_dir=tmp_path, report=messages.append)  # resumes: no second venv
    assert [command[1:3] for command in fake.commands[2:]] == [["-m", "pip"], ["-c", fake.commands[3][2]]]
    assert install.executable == venv / "bin" / "label-studio"
    assert (venv / ".label-studio-decomp-ready").read_text().strip() == "1.23.2"
    assert any("installing Label Studio 1.23.2" in message for message in messages)

    fake.commands.clear()
    assert ensure_label_studio(cache_dir=tmp_path, report=messages.append) == install
    assert fake.commands == []


def test_environment_serves_loopback_and_local_files_and_drops_account_variables(tmp_path: Path) -> None:
    inherited = {
        "PATH": "/usr/bin",
        "USERNAME": "me",
        "LABEL_STUDIO_PASSWORD": "x",
        "HOST": "http://a:1",
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "true",
    }
    env = label_studio_env(tmp_path / "data", tmp_path / "files", inherited)
    assert env["PATH"] == "/usr/bin"
    assert not {"USERNAME", "LABEL_STUDIO_PASSWORD", "HOST"} & set(env)
    assert env["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"  # the prefixed spelling wins in Label Studio
    assert env["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "files")
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path / "data")
    assert env["LABEL_STUDIO_SENTRY_DSN"] == "" and env["LABEL_STUDIO_LATEST_VERSION_CHECK"] == "false"


def test_credentials_are_validated_and_saved_private(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="e-mail"):
        LabelStudioCredentials("admin", "secret", "abcdef")
    with pytest.raises(ValueError, match="6 to 40"):
        LabelStudioCredentials("admin@example.com", "secret", "abc")
    credentials = LabelStudioCredentials.generate()
    path = tmp_path / CREDENTIALS_FILE
    credentials.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert LabelStudioCredentials.load(path) == credentials
    path.write_text("{not json")
    with pytest.raises(ServiceError, match="damaged"):
        LabelStudioCredentials.load(path)


# A stand-in `label-studio` executable: logs each call with the account it was given, fails with exit code
# $FAKE_INIT_EXIT when that is set.
FAKE_LABEL_STUDIO = """#!/bin/sh
echo "$* user=$LABEL_STUDIO_USERNAME token=$LABEL_STUDIO_USER_TOKEN" >> "$(dirname "$0")/calls"
echo "fake label-studio $1"
exit "${FAKE_INIT_EXIT:-0}"
"""


def _fake_install(cache_dir: Path) -> Path:
    """A ready install of the stand-in, with a migrated template database; returns its call log."""
    venv = cache_dir / f"label-studio-{harness.LABEL_STUDIO_VERSION}"
    (venv / "bin").mkdir(parents=True)
    executable = venv / "bin" / "label-studio"
    executable.write_text(FAKE_LABEL_STUDIO)
    executable.chmod(0o755)
    (venv / ".label-studio-decomp-ready").touch()
    (cache_dir / f"label-studio-{harness.LABEL_STUDIO_VERSION}-migrated.sqlite3").write_bytes(b"migrated")
    return venv / "bin" / "calls"


def _init_calls(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def test_provisioning_creates_the_administrator_once_from_the_migrated_template(tmp_path: Path) -> None:
    calls = _fake_install(tmp_path / "cache")
    data_dir = tmp_path / "data"
    studio = LocalLabelStudio(data_dir, cache_dir=tmp_path / "cache", report=lambda message: None)
    studio.provision()
    credentials = studio.credentials
    assert _init_calls(calls) == [
        f"init -q --enable-legacy-api-token user={credentials.username} token={credentials.api_key}"
    ]
    assert (data_dir / harness.DATABASE_FILE).read_bytes() == b"migrated"
    assert LabelStudioCredentials.load(data_dir / CREDENTIALS_FILE) == credentials
    assert (data_dir / "local-files").is_dir()

    again = LocalLabelStudio(data_dir, cache_dir=tmp_path / "cache", report=lambda message: None)
    again.provision()
    assert again.credentials == credentials and len(_init_calls(calls)) == 1  # reused, not re-initialised


def test_a_failed_init_leaves_nothing_half_made_and_a_killed_one_is_finished(tmp_path, monkeypatch) -> None:
    calls = _fake_install(tmp_path / "cache")
    data_dir = tmp_path / "data"
    chosen = LabelStudioCredentials("curator@example.com", "pw", "abcdef123456")
    studio = LocalLabelStudio(
        data_dir, credentials=chosen, cache_dir=tmp_path / "cache", report=lambda m: None
    )
    monkeypatch.setenv("FAKE_INIT_EXIT", "4")
    with pytest.raises(
        ServiceError, match=r"(?s)`label-studio init` .* failed \(exit code 4\).*fake label-studio init"
    ):
        studio.provision()
    assert sorted(path.name for path in data_dir.iterdir()) == ["label-studio.log", "local-files"]

    # a run killed during init leaves the pending credentials and the database: the next run finishes it
    chosen.save(data_dir / (CREDENTIALS_FILE + ".pending"))
    (data_dir / harness.DATABASE_FILE).write_bytes(b"half initialised")
    monkeypatch.delenv("FAKE_INIT_EXIT")
    resumed = LocalLabelStudio(data_dir, cache_dir=tmp_path / "cache", report=lambda message: None)
    resumed.provision()
    assert resumed.credentials == chosen
    assert _init_calls(calls)[-1].endswith("user=curator@example.com token=abcdef123456")
    assert (data_dir / harness.DATABASE_FILE).read_bytes() == b"half initialised"
    assert not (data_dir / (CREDENTIALS_FILE + ".pending")).exists()

    other = LabelStudioCredentials("someone@example.com", "pw", "zzzzzz")
    with pytest.raises(ServiceError, match="provisioned with other credentials"):
        LocalLabelStudio(data_dir, credentials=other, cache_dir=tmp_path / "cache").provision()


def test_a_foreign_database_is_not_taken_over_without_its_credentials(tmp_path: Path) -> None:
    _fake_install(tmp_path / "cache")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / harness.DATABASE_FILE).write_bytes(b"someone else's database")
    studio = LocalLabelStudio(data_dir, cache_dir=tmp_path / "cache", report=lambda message: None)
    with pytest.raises(ServiceError, match="did not provision .* pass the credentials"):
        studio.start()
    assert (data_dir / harness.DATABASE_FILE).read_bytes() == b"someone else's database"


def test_a_fixed_port_in_use_is_an_error_not_a_silent_move(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        studio = LocalLabelStudio(tmp_path / "data", port=port, cache_dir=tmp_path / "cache")
        with pytest.raises(ServiceError, match=f"port {port} .* in use"):
            studio.start()
        backend = BackendProcess(
            tmp_path / "models", label_studio_url="http://127.0.0.1:1", api_key="k", port=port
        )
        with pytest.raises(ServiceError, match=f"port {port} .* in use"):
            backend.start()
    assert not (tmp_path / "cache").exists()  # refused before installing anything


def test_backend_environment_carries_label_studio_access_and_only_the_requested_auth(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("BASIC_AUTH_USER", "inherited")
    monkeypatch.setenv("BASIC_AUTH_PASS", "inherited")
    plain = BackendProcess(tmp_path / "m", label_studio_url="http://127.0.0.1:9", api_key="tok")
    env = plain._env()
    assert env["LABEL_STUDIO_URL"] == "http://127.0.0.1:9" and env["LABEL_STUDIO_API_KEY"] == "tok"
    assert env["MODEL_DIR"] == str((tmp_path / "m").resolve())
    assert "BASIC_AUTH_USER" not in env and plain.auth_headers == {}
    guarded = BackendProcess(tmp_path / "m", label_studio_url="u", api_key="t", basic_auth=("ann", "pw"))
    assert guarded._env()["BASIC_AUTH_USER"] == "ann" and guarded._env()["BASIC_AUTH_PASS"] == "pw"
    assert guarded.auth_headers == {"Authorization": "Basic YW5uOnB3"}
    assert basic_auth_header("ann", "pw") == "Basic YW5uOnB3"


# -- a real Label Studio ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_sdk_client_authenticates_with_the_api_key_and_a_personal_access_token(label_studio) -> None:
    assert label_studio.client().users.whoami().email == label_studio.username
    token = label_studio.personal_access_token()
    assert token.count(".") == 2  # a JWT
    assert label_studio.personal_access_token() == token  # one per user in Label Studio: kept, not remade
    assert (
        LabelStudioCredentials.load(label_studio.data_dir / CREDENTIALS_FILE).personal_access_token == token
    )
    assert LabelStudio(base_url=label_studio.url, api_key=token).users.whoami().email == label_studio.username
    with local_http_client(base_url=label_studio.url) as http:
        assert http.get("/api/projects", headers={"Authorization": "Token wrong-token"}).status_code == 401
        assert http.get("/health").json() == {"status": "UP"}


@pytest.mark.e2e
def test_brush_project_with_a_proposals_control_is_created(ls_client, brush_label_config) -> None:
    project = ls_client.projects.create(title="harness brush", label_config=brush_label_config(decomp_k="3"))
    stored = ls_client.projects.get(project.id)
    interface = LabelInterface(stored.label_config)
    assert interface.get_control("tag").tag == "BrushLabels"
    proposals = interface.get_control("decomp_regions")
    assert proposals.tag == "RectangleLabels" and proposals.attr["decomp_k"] == "3"
    assert set(interface.get_control("tag").labels) == {"Tumor", "Stroma", "Lymphocytes", "Necrosis"}


@pytest.mark.e2e
def test_local_files_import_as_tasks_that_serve_the_same_pixels(
    label_studio, ls_client, brush_label_config, image_folder, sample_images
) -> None:
    project = ls_client.projects.create(title="harness files", label_config=brush_label_config())
    folder, paths = image_folder(sample_images)
    (folder / "notes.txt").write_text("not an image")
    label_studio.sync_local_storage(project.id, folder)
    tasks = sorted(ls_client.tasks.list(project=project.id), key=lambda task: task.data["image"])
    expected = [f"/data/local-files/?d={folder.name}/{path.name}" for path in paths]
    assert [task.data["image"] for task in tasks] == expected
    with local_http_client(base_url=label_studio.url, timeout=30) as http:
        for url, image in zip(expected, sample_images, strict=True):
            served = http.get(url, headers={"Authorization": f"Token {label_studio.api_key}"})
            assert served.status_code == 200
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(served.content))), image)


@pytest.mark.e2e
def test_local_storage_outside_the_root_is_refused(label_studio, tmp_path) -> None:
    with pytest.raises(ValueError, match="outside the local-files root"):
        label_studio.sync_local_storage(1, tmp_path)


@pytest.mark.e2e
def test_a_second_server_on_the_same_data_dir_is_refused(label_studio) -> None:
    second = LocalLabelStudio(label_studio.data_dir)
    with pytest.raises(ServiceError, match=f"already serves data dir .* at {label_studio.url}"):
        second.start()
    second.stop()
    assert (label_studio.data_dir / SERVER_FILE).is_file()  # the running server's record stays


@pytest.mark.e2e
def test_restart_reuses_the_data_dir_login_and_url_and_leaves_no_process(label_studio, ls_client) -> None:
    project = ls_client.projects.create(title="survives a restart")
    pid, url, api_key = label_studio.pid, label_studio.url, label_studio.api_key
    token = label_studio.personal_access_token()
    label_studio.stop()
    assert not label_studio.running and not live_group_members(pid)
    assert not (label_studio.data_dir / SERVER_FILE).exists()
    with local_http_client() as http, pytest.raises(httpx.ConnectError):
        http.get(f"{url}/health")
    started = time.monotonic()
    label_studio.start()
    print(f"Label Studio restart on an existing data dir: {time.monotonic() - started:.1f} s")
    assert (label_studio.url, label_studio.api_key) == (url, api_key) and label_studio.pid != pid
    assert ls_client.projects.get(project.id).title == "survives a restart"
    assert label_studio.personal_access_token() == token
