"""A local Label Studio for the demo and the end-to-end tests: installed once into its own virtual environment
under the user cache, provisioned with an SQLite data directory and an administrator, served on 127.0.0.1.

Typical use::

    with LocalLabelStudio(data_dir) as studio:
        client = studio.client()          # label-studio-sdk LabelStudio, authenticated
        print(studio.url, studio.username, studio.password)

Authentication. The organisation is created with legacy API tokens enabled (Label Studio 1.23 disables them
unless asked at creation time), so :attr:`LocalLabelStudio.api_key` is a fixed token that every client
accepts, including the label-studio-sdk ``LabelStudio`` client and curl, and that survives restarts.
:meth:`LocalLabelStudio.personal_access_token` gives the kind of token (a JWT refresh token) that users of a
stock Label Studio 1.23 have, made by logging in like a browser.

Reuse. The virtual environment is installed once per Label Studio version (a stamp file marks a complete
install, so an interrupted one is finished on the next run). A data directory is provisioned once; its login
is kept in ``decomp-credentials.json`` (mode 0600) next to the database, and a later run starts the same
server with the same login. Database migrations, the slow part of provisioning (about a minute), run once
per version into a template database that new data directories copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_backend.devtools import (
    LOOPBACK,
    LocalService,
    ServiceError,
    ServiceProcess,
    live_group_members,
    local_http_client,
    read_tail,
    reports_status_up,
)

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

LABEL_STUDIO_VERSION = "1.23.2"
CREDENTIALS_FILE = "decomp-credentials.json"
SERVER_FILE = "decomp-server.json"
DATABASE_FILE = "label_studio.sqlite3"
LOG_FILE = "label-studio.log"
IMAGE_FILES = r".*\.(png|jpe?g|tiff?|bmp|webp)$"

# Label Studio reads these through ``get_env(NAME)``, which also accepts ``LABEL_STUDIO_NAME`` and
# ``HEARTEX_NAME``. Inherited account variables would make ``label-studio start`` create another superuser,
# and an inherited HOST would bake an absolute address into every imported task URL.
_INHERITED_BUT_DROPPED = {
    prefix + name
    for prefix in ("", "LABEL_STUDIO_", "HEARTEX_")
    for name in ("USERNAME", "PASSWORD", "USER_TOKEN", "HOST")
}


def report_to_stderr(message: str) -> None:
    print(f"label-studio-decomp: {message}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/label-studio-decomp``, by default ``~/.cache/label-studio-decomp``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "label-studio-decomp"


@dataclass(frozen=True)
class LabelStudioInstall:
    """A Label Studio installed in its own virtual environment."""

    venv: Path
    version: str

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def ready_stamp(self) -> Path:
        return self.venv / ".label-studio-decomp-ready"


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialises installs and template creation between processes (a test run and a demo at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_step(what: str, argv: list[str], *, hint: str, **kwargs: Any) -> subprocess.CompletedProcess:
    try:
        completed = subprocess.run(argv, check=False, **kwargs)
    except OSError as error:
        raise ServiceError(f"{what} failed: could not run {argv[0]}: {error}. {hint}") from error
    if completed.returncode != 0:
        raise ServiceError(f"{what} failed (exit code {completed.returncode}): {' '.join(argv)}. {hint}")
    return completed


def ensure_label_studio(
    version: str = LABEL_STUDIO_VERSION,
    *,
    cache_dir: Path | None = None,
    python: str | None = None,
    report: Callable[[str], None] = report_to_stderr,
) -> LabelStudioInstall:
    """Label Studio ``version`` in ``<cache_dir>/label-studio-<version>``, installed with pip on first use.

    ``python`` (default: this interpreter) builds the virtual environment. Label Studio pins its own
    label-studio-sdk and Django, so it never shares an environment with the backend.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    install = LabelStudioInstall(cache_dir / f"label-studio-{version}", version)
    with _exclusive_lock(cache_dir / f"label-studio-{version}.lock"):
        if install.ready_stamp.is_file() and install.executable.is_file():
            return install
        if install.python.is_file():
            report(f"checking the Label Studio {version} install in {install.venv} (once)")
        else:
            report(
                f"installing Label Studio {version} into {install.venv} (once; about 1 GB from PyPI, "
                "a few minutes)"
            )
        hint = f"Check that PyPI is reachable; the next run resumes the install in {install.venv}."
        if not install.python.is_file():
            _run_step(
                "creating the virtual environment",
                [python or sys.executable, "-m", "venv", str(install.venv)],
                hint=hint,
            )
        _run_step(
            f"pip install label-studio=={version}",
            [
                str(install.python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                f"label-studio=={version}",
            ],
            hint=hint,
        )
        found = _run_step(
            "checking the installed Label Studio version",
            [str(install.python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
            hint=hint,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if found != version:
            raise ServiceError(f"{install.venv} holds Label Studio {found!r}, expected {version}. {hint}")
        install.ready_stamp.write_text(version + "\n")
        report(f"Label Studio {version} installed")
    return install


def _migrated_template(install: LabelStudioInstall, report: Callable[[str], None]) -> Path:
    """An empty database with every migration of ``install`` applied, made once per version.

    A migrated database holds no user, organisation or secret (the secret key lives in the data
    directory's ``.env``), so copying it and then creating the administrator gives the same database as a
    fresh ``label-studio init`` in a few seconds instead of a minute."""
    template = install.venv.parent / f"label-studio-{install.version}-migrated.sqlite3"
    with _exclusive_lock(install.venv.parent / f"label-studio-{install.version}-migrated.lock"):
        if template.is_file():
            return template
        report(f"preparing the Label Studio {install.version} database (once, about a minute)")
        with tempfile.TemporaryDirectory(dir=install.venv.parent, prefix=".migrating-") as scratch:
            log_path = Path(scratch) / LOG_FILE
            _run_label_studio_init(
                install, Path(scratch), label_studio_env(Path(scratch), Path(scratch)), log_path
            )
            os.replace(Path(scratch) / DATABASE_FILE, template)
    return template


def _run_label_studio_init(
    install: LabelStudioInstall, data_dir: Path, env: Mapping[str, str], log_path: Path, *extra: str
) -> None:
    with open(log_path, "ab") as log:
        start = log.tell()
        try:
            completed = subprocess.run(
                [str(install.executable), "init", "-q", *extra],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise ServiceError(
                f"`label-studio init` in {data_dir} took over 15 minutes; see {log_path}"
            ) from error
    if completed.returncode != 0:
        raise ServiceError(
            f"`label-studio init` in {data_dir} failed (exit code {completed.returncode}). "
            f"Last lines of {log_path}:\n{read_tail(log_path, start=start)}"
        )


def label_studio_env(
    data_dir: Path, local_files_root: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a Label Studio that serves ``data_dir`` on loopback: the inherited environment
    (``base``, default ``os.environ``) minus account and host variables, plus the settings below. Each is set
    with the ``LABEL_STUDIO_`` prefix, which Label Studio reads before any other spelling."""
    env = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if name not in _INHERITED_BUT_DROPPED
    }
    settings = {
        "BASE_DATA_DIR": str(data_dir),
        # The backend and its webhook listen on 127.0.0.1, which Label Studio refuses by default; both
        # switches are needed (ml.create also validates the webhook URL it creates).
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        # Tasks point at images under the local-files root as /data/local-files/?d=<relative path>.
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(local_files_root),
        # Nothing leaves the machine: no PyPI version check, analytics or Sentry error reports.
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        # Only the provisioned administrator (and people they invite) can log in.
        "DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    env.update({f"LABEL_STUDIO_{name}": value for name, value in settings.items()})
    return env


@dataclass(frozen=True)
class LabelStudioCredentials:
    """The administrator's login (``username`` is an e-mail address), legacy API token, and personal
    access token once one was made (Label Studio allows one per user)."""

    username: str
    password: str
    api_key: str
    personal_access_token: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if "@" not in self.username:
            raise ValueError(f"Label Studio username must be an e-mail address, got {self.username!r}")
        if not self.password:
            raise ValueError("Label Studio password must not be empty")
        # Label Studio silently ignores a token of 5 characters or fewer; its token column holds 40.
        if not 6 <= len(self.api_key) <= 40 or not self.api_key.isalnum():
            raise ValueError("Label Studio API token must be 6 to 40 letters or digits")

    @classmethod
    def generate(cls, username: str = "admin@example.com") -> LabelStudioCredentials:
        return cls(username=username, password=secrets.token_urlsafe(12), api_key=secrets.token_hex(20))

    @classmethod
    def load(cls, path: Path) -> LabelStudioCredentials:
        try:
            stored = json.loads(path.read_text())
            return cls(
                username=stored["username"],
                password=stored["password"],
                api_key=stored["api_key"],
                personal_access_token=stored.get("personal_access_token"),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ServiceError(
                f"{path} is damaged ({error}); it should hold username, password and api_key as JSON"
            ) from error

    def save(self, path: Path) -> None:
        """Written readable by the owner only, and atomically: a crash leaves the old file or the new one."""
        scratch = path.with_name(path.name + ".tmp")
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
        os.replace(scratch, path)


class LocalLabelStudio(LocalService):
    """Label Studio on ``127.0.0.1:<port>`` serving ``data_dir``, as a context manager.

    ``start()`` installs Label Studio if needed, provisions ``data_dir`` on first use (or reuses it),
    launches the server in its own process group and waits until it answers and accepts the API key.
    ``stop()`` (also on leaving the ``with`` block, on exceptions and Ctrl-C, and at interpreter exit)
    terminates the group and checks that nothing of it survives.

    ``port=None`` picks a free port on the first start and keeps it across restarts. ``credentials`` are
    used to provision a new data directory, or to reach an existing one that this class did not provision.
    """

    def __init__(
        self,
        data_dir: Path,
        local_files_root: Path | None = None,
        *,
        port: int | None = None,
        credentials: LabelStudioCredentials | None = None,
        version: str = LABEL_STUDIO_VERSION,
        cache_dir: Path | None = None,
        start_timeout: float = 180.0,
        stop_grace: float = 10.0,
        extra_env: Mapping[str, str] | None = None,
        report: Callable[[str], None] = report_to_stderr,
    ) -> None:
        super().__init__(port=port, stop_grace=stop_grace)
        self.data_dir = Path(data_dir).resolve()
        self.local_files_root = Path(local_files_root or self.data_dir / "local-files").resolve()
        self.version = version
        self.cache_dir = cache_dir
        self.start_timeout = start_timeout
        self.extra_env = dict(extra_env or {})
        self.report = report
        self._requested_credentials = credentials
        self._credentials: LabelStudioCredentials | None = None

    # -- what clients need -------------------------------------------------------------------------------

    @property
    def credentials(self) -> LabelStudioCredentials:
        if self._credentials is None:
            raise ServiceError("Label Studio has not been started yet: call start() first")
        return self._credentials

    @property
    def username(self) -> str:
        return self.credentials.username

    @property
    def password(self) -> str:
        return self.credentials.password

    @property
    def api_key(self) -> str:
        return self.credentials.api_key

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    def client(self) -> LabelStudio:
        """A label-studio-sdk client authenticated with :attr:`api_key`."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.api_key)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> LocalLabelStudio:
        if self.running:
            return self
        self._refuse_second_server()
        self._claim_port("Label Studio")
        install = self.provision()
        service = ServiceProcess(
            "Label Studio",
            [
                str(install.executable),
                "start",
                "--no-browser",
                "--internal-host",
                LOOPBACK,
                "--port",
                str(self.port),
            ],
            env=self._env(),
            log_path=self.log_path,
            health_url=f"{self.url}/health",
            is_ready=reports_status_up,
        )
        self.report(f"starting Label Studio {self.version} on {self.url} (data in {self.data_dir})")
        self._launch(service, self.start_timeout)
        try:
            self._record_server()
            self._check_api_key()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        started_here = self._service is not None  # another process's record is not ours to remove
        super().stop()
        if started_here:
            (self.data_dir / SERVER_FILE).unlink(missing_ok=True)

    # -- helpers for projects ----------------------------------------------------------------------------

    def sync_local_storage(self, project: int, directory: Path, *, regex_filter: str = IMAGE_FILES) -> int:
        """Import every file under ``directory`` (inside :attr:`local_files_root`) whose name matches
        ``regex_filter`` as a task of ``project``, by creating and syncing a local-files storage. Tasks get
        ``{"image": "/data/local-files/?d=<path relative to the root>"}``. Returns the storage id."""
        directory = Path(directory).resolve()
        if not directory.is_dir():
            raise ValueError(f"local-files directory {directory} does not exist")
        if not directory.is_relative_to(self.local_files_root):
            raise ValueError(
                f"{directory} is outside the local-files root {self.local_files_root}; Label Studio serves "
                "local files only from under that root"
            )
        storages = self.client().import_storage.local
        storage = storages.create(
            project=project,
            path=str(directory),
            regex_filter=regex_filter,
            use_blob_urls=True,
            title=f"local files {directory.relative_to(self.local_files_root)}",
        )
        storages.sync(id=storage.id)
        return storage.id

    def personal_access_token(self) -> str:
        """The administrator's personal access token (a JWT refresh token, the kind of token users of a stock
        Label Studio 1.23 have; the label-studio-sdk client accepts it as ``api_key``). Made on first use by
        logging in through the login form as a browser does, then kept with the credentials, because Label
        Studio gives each user only one."""
        known = self.credentials.personal_access_token
        if known and self._refreshes(known):
            return known
        token = self._create_personal_access_token()
        self._credentials = replace(self.credentials, personal_access_token=token)
        stored_path = self.data_dir / CREDENTIALS_FILE
        if stored_path.is_file():  # a data dir provisioned elsewhere keeps no file of ours
            self._credentials.save(stored_path)
        return token

    def _refreshes(self, token: str) -> bool:
        with local_http_client(base_url=self.url, timeout=30.0) as http:
            return http.post("/api/token/refresh/", json={"refresh": token}).status_code == 200

    def _create_personal_access_token(self) -> str:
        with local_http_client(base_url=self.url, timeout=30.0) as http:
            http.get("/user/login/").raise_for_status()
            login = http.post(
                "/user/login/",
                data={
                    "email": self.username,
                    "password": self.password,
                    "csrfmiddlewaretoken": http.cookies["csrftoken"],
                },
                headers={"Referer": f"{self.url}/user/login/"},
            )
            if login.status_code != 302:
                raise ServiceError(
                    f"logging in to {self.url} as {self.username} failed (HTTP {login.status_code}); "
                    f"check the password in {self.data_dir / CREDENTIALS_FILE}"
                )
            created = http.post(
                "/api/token/", headers={"X-CSRFToken": http.cookies["csrftoken"], "Referer": f"{self.url}/"}
            )
        if created.status_code == 409:
            raise ServiceError(
                f"{self.username} already has a personal access token that label-studio-decomp does not know "
                f"(made in the web UI?); revoke it under Account & Settings at {self.url}, or use the API key"
            )
        if created.status_code != 201:
            raise ServiceError(
                f"{self.url}/api/token/ did not create a personal access token "
                f"(HTTP {created.status_code}: {created.text[:200]})"
            )
        return created.json()["token"]

    # -- internals ---------------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**label_studio_env(self.data_dir, self.local_files_root), **self.extra_env}

    def _refuse_second_server(self) -> None:
        """Two servers on one SQLite database overwrite each other's work; a record left by a killed run
        whose server is gone is just removed."""
        record = self.data_dir / SERVER_FILE
        if not record.is_file():
            return
        try:
            running = json.loads(record.read_text())
            pid, url = int(running["pid"]), running["url"]
        except (ValueError, KeyError, TypeError):
            record.unlink()
            return
        if live_group_members(pid):
            raise ServiceError(
                f"a Label Studio already serves data dir {self.data_dir} at {url} (pid {pid}); stop it "
                f"first (kill -TERM -- -{pid}) or use another data dir"
            )
        record.unlink()

    def _record_server(self) -> None:
        record = self.data_dir / SERVER_FILE
        record.write_text(json.dumps({"pid": self.pid, "url": self.url, "started": time.time()}))

    def _as_requested(self, stored: LabelStudioCredentials, path: Path) -> LabelStudioCredentials:
        requested = self._requested_credentials
        if requested is not None and requested != stored:
            raise ServiceError(
                f"data dir {self.data_dir} was provisioned with other credentials (see {path}); "
                "leave credentials out to reuse them, or use a new data dir"
            )
        return stored

    def provision(self) -> LabelStudioInstall:
        """Install Label Studio if needed and provision the data directory if needed, without starting the
        server; afterwards the credentials are known. :meth:`start` does this first."""
        install = ensure_label_studio(self.version, cache_dir=self.cache_dir, report=self.report)
        self.local_files_root.mkdir(parents=True, exist_ok=True)
        self._credentials = self._provision(install)
        return install

    def _provision(self, install: LabelStudioInstall) -> LabelStudioCredentials:
        """The data directory's credentials, provisioning it first if needed.

        The credentials are written to a pending file before ``label-studio init`` runs and renamed when it
        has succeeded, so a run killed half-way is finished by the next one (``init`` is idempotent)."""
        stored_path = self.data_dir / CREDENTIALS_FILE
        pending_path = self.data_dir / (CREDENTIALS_FILE + ".pending")
        database = self.data_dir / DATABASE_FILE
        if stored_path.is_file():
            return self._as_requested(LabelStudioCredentials.load(stored_path), stored_path)
        if pending_path.is_file():
            credentials = self._as_requested(LabelStudioCredentials.load(pending_path), pending_path)
        elif database.is_file():
            if self._requested_credentials is None:
                raise ServiceError(
                    f"data dir {self.data_dir} holds a Label Studio database that label-studio-decomp "
                    f"did not provision (no {CREDENTIALS_FILE}); pass the credentials of its "
                    "administrator, or use an empty data dir"
                )
            return self._requested_credentials  # checked against the server in _check_api_key
        else:
            credentials = self._requested_credentials or LabelStudioCredentials.generate()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            credentials.save(pending_path)
        self.report(f"provisioning Label Studio data dir {self.data_dir}")
        if not database.is_file():
            shutil.copyfile(_migrated_template(install, self.report), database)
        env = {
            **self._env(),
            "LABEL_STUDIO_USERNAME": credentials.username,
            "LABEL_STUDIO_PASSWORD": credentials.password,
            "LABEL_STUDIO_USER_TOKEN": credentials.api_key,
        }
        try:
            # legacy tokens can only be switched on while the organisation is created
            _run_label_studio_init(install, self.data_dir, env, self.log_path, "--enable-legacy-api-token")
        except BaseException:
            database.unlink(missing_ok=True)  # the next run provisions from scratch
            pending_path.unlink(missing_ok=True)
            raise
        os.replace(pending_path, stored_path)
        return credentials

    def _check_api_key(self) -> None:
        with local_http_client(base_url=self.url, timeout=30.0) as http:
            answer = http.get("/api/current-user/whoami", headers={"Authorization": f"Token {self.api_key}"})
        if answer.status_code != 200:
            raise ServiceError(
                f"Label Studio at {self.url} rejected the API key of {self.username} "
                f"(HTTP {answer.status_code}: {answer.text[:200]}). A data dir provisioned elsewhere may "
                "have legacy tokens disabled or another token."
            )
        email = answer.json().get("email")
        if email != self.username:
            raise ServiceError(f"the API key belongs to {email!r}, not to {self.username!r}")
