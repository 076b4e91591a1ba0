"""Connecting the DECOMP backend to a Label Studio project, and checking that the connection really works.

Label Studio accepts a connection only after its own /health and /setup calls to the backend succeed, and
creates the project webhook through which annotations reach the backend's trainer. Two things commonly go
wrong after that and stay silent (seen on Label Studio 1.23.2): a backend behind basic auth gets a webhook
without credentials (every annotation event is answered 401 and training never starts), and a webhook that
was deleted by hand is not recreated. :func:`connect_backend` checks and repairs both, and undoes what it
created when a later step fails, so a failed connect leaves the project as it found it.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from adapters.errors import BACKEND_UNREACHABLE_FIX, AdapterError, explain

logger = logging.getLogger(__name__)

DEFAULT_BACKEND_TITLE = "DECOMP active learning"
CONNECTED = "CO"
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LabelStudioSettings:
    """Where Label Studio is and how to authenticate (a legacy token or a personal access token)."""

    url: str
    api_key: str

    @classmethod
    def resolve(cls, url: str | None = None, api_key: str | None = None) -> LabelStudioSettings:
        """Explicit values first, then LABEL_STUDIO_URL (or LABEL_STUDIO_HOST) and LABEL_STUDIO_API_KEY."""
        url = url or os.environ.get("LABEL_STUDIO_URL") or os.environ.get("LABEL_STUDIO_HOST")
        api_key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
        missing = [name for name, value in (("URL", url), ("API key", api_key)) if not value]
        if missing:
            raise AdapterError(
                f"the Label Studio {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set",
                "pass --label-studio-url and --api-key, or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                "(the token from Label Studio > Account & Settings)",
            )
        if not url.startswith(("http://", "https://")):
            raise AdapterError(
                f"the Label Studio URL {url!r} has no scheme", "write it as http://host:port or https://host"
            )
        return cls(url=url.rstrip("/"), api_key=api_key)

    def client(self, *, on_request: Callable[[httpx.Request], None] | None = None) -> LabelStudio:
        """A label-studio-sdk client; ``on_request`` sees every HTTP request it sends (for counting)."""
        hooks = {"request": [on_request]} if on_request else {}
        http = httpx.Client(timeout=REQUEST_TIMEOUT_S, follow_redirects=True, event_hooks=hooks)
        return LabelStudio(base_url=self.url, api_key=self.api_key, httpx_client=http)


@dataclass(frozen=True)
class BasicAuth:
    user: str
    password: str

    def header(self) -> str:
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"


@dataclass(frozen=True)
class Connection:
    """The outcome of :func:`connect_backend`."""

    project_id: int
    ml_backend_id: int
    backend_url: str
    model_version: str | None
    webhook_id: int
    created_backend: bool
    repaired_webhook: bool


def same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def webhook_url(backend_url: str) -> str:
    return backend_url.rstrip("/") + "/webhook"


def require_project(client: LabelStudio, project_id: int, settings: LabelStudioSettings) -> Any:
    """The project, or an error that lists the projects this token can see."""
    try:
        return client.projects.get(project_id)
    except ApiError as error:
        if error.status_code != 404:
            raise explain(
                error, action=f"reading project {project_id}", label_studio_url=settings.url
            ) from error
    except httpx.TransportError as error:
        raise explain(error, action=f"reading project {project_id}", label_studio_url=settings.url) from error
    visible = [f"{project.id} ({project.title})" for project in client.projects.list()]
    raise AdapterError(
        f"Label Studio at {settings.url} has no project {project_id} that this API key can see",
        "pass --project with one of: "
        + (", ".join(visible) if visible else "(none: create a project first)"),
    )


def connect_backend(
    client: LabelStudio,
    settings: LabelStudioSettings,
    project_id: int,
    backend_url: str,
    *,
    basic_auth: BasicAuth | None = None,
    title: str = DEFAULT_BACKEND_TITLE,
) -> Connection:
    """Connect (or reuse the connection to) ``backend_url`` and verify state, version and webhook."""
    require_project(client, project_id, settings)
    backend_url = backend_url.rstrip("/")
    step = "listing the project's ML backends"
    created: int | None = None
    webhooks_before: set[int] = set()
    try:
        webhooks_before = {hook.id for hook in client.webhooks.list(project=str(project_id))}
        existing = [m for m in client.ml.list(project=project_id) if same_url(m.url, backend_url)]
        auth = _auth_fields(basic_auth)
        if existing:
            ml_id = existing[0].id
            if _auth_differs(existing[0], basic_auth):
                step = f"updating the credentials of ML backend {ml_id}"
                # Label Studio 1.23.2 answers 500 unless url and project come with every update.
                client.ml.update(ml_id, url=backend_url, project=project_id, **auth)
        else:
            step = f"connecting the backend at {backend_url}"
            ml_id = client.ml.create(
                project=project_id, url=backend_url, title=title, is_interactive=False, **auth
            ).id
            created = ml_id
        step = "asking Label Studio to check the backend (/health and /setup)"
        ml = client.ml.get(ml_id)
        if ml.state != CONNECTED:
            raise AdapterError(
                f"Label Studio reports the backend at {backend_url} as {ml.readable_state or ml.state}: "
                f"{ml.error_message or 'no details'}",
                BACKEND_UNREACHABLE_FIX,
            )
        step = "checking the project's webhook"
        hook_id, repaired = _ensure_webhook(client, project_id, backend_url, basic_auth)
    except Exception as error:
        if created is not None:
            _undo_connection(client, project_id, created, webhooks_before)
        raise explain(error, action=step, label_studio_url=settings.url, backend_url=backend_url) from error
    return Connection(
        project_id=project_id,
        ml_backend_id=ml_id,
        backend_url=backend_url,
        model_version=ml.model_version,
        webhook_id=hook_id,
        created_backend=created is not None,
        repaired_webhook=repaired,
    )


def _auth_fields(basic_auth: BasicAuth | None) -> dict[str, Any]:
    if basic_auth is None:
        return {"auth_method": "NONE"}
    return {
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": basic_auth.user,
        "basic_auth_pass": basic_auth.password,
    }


def _auth_differs(ml: Any, basic_auth: BasicAuth | None) -> bool:
    """Whether the stored connection's credentials differ from the requested ones. Label Studio never
    returns the password, so a given password is always re-sent."""
    if basic_auth is None:
        return ml.auth_method == "BASIC_AUTH"
    return True


def _ensure_webhook(
    client: LabelStudio, project_id: int, backend_url: str, basic_auth: BasicAuth | None
) -> tuple[int, bool]:
    """The id of the backend's webhook, created or repaired as needed, and whether anything was changed."""
    url = webhook_url(backend_url)
    hooks = [hook for hook in client.webhooks.list(project=str(project_id)) if same_url(hook.url, url)]
    headers = {"Authorization": basic_auth.header()} if basic_auth else {}
    if not hooks:
        hook = client.webhooks.create(
            url=url,
            project=project_id,
            send_payload=True,
            send_for_all_actions=True,
            headers=headers,
            is_active=True,
        )
        logger.warning("the webhook %s was missing; created it", url)
        return hook.id, True
    hook = hooks[0]
    current = dict(hook.headers or {})
    wanted = {**current, **headers}
    if current == wanted and hook.is_active and hook.send_payload and hook.send_for_all_actions:
        return hook.id, False
    client.webhooks.update(
        hook.id, headers=wanted, is_active=True, send_payload=True, send_for_all_actions=True
    )
    return hook.id, True


def _undo_connection(client: LabelStudio, project_id: int, ml_id: int, webhooks_before: set[int]) -> None:
    """Remove the connection this run created and the webhook Label Studio created with it."""
    try:
        client.ml.delete(ml_id)
        for hook in client.webhooks.list(project=str(project_id)):
            if hook.id not in webhooks_before:
                client.webhooks.delete(hook.id)
    except (ApiError, httpx.HTTPError):
        logger.exception(
            "could not undo the connection to ML backend %s; remove it in the project settings", ml_id
        )


def check_backend(
    client: LabelStudio, settings: LabelStudioSettings, project_id: int, model_version: str
) -> str | None:
    """Make sure the project's backend is up and serves ``model_version`` before anything is written.

    Returns a warning when no backend is connected (the queue still works, but annotations train
    nothing); raises when the connected backend is down, or serves another version than the model this
    process is about to score with (a different MODEL_DIR, most likely).
    """
    step = "checking the project's ML backends"
    try:
        connected = [client.ml.get(ml.id) for ml in client.ml.list(project=project_id)]
    except (ApiError, httpx.TransportError) as error:
        raise explain(error, action=step, label_studio_url=settings.url) from error
    if not connected:
        return (
            f"no ML backend is connected to project {project_id}: the queue is written, but annotations will "
            "not train the model (run label-studio-decomp connect)"
        )
    up = [ml for ml in connected if ml.state == CONNECTED]
    if not up:
        ml = connected[0]
        raise AdapterError(
            f"the backend at {ml.url} is down (Label Studio reports {ml.readable_state or ml.state}: "
            f"{ml.error_message or 'no details'}); nothing was written",
            BACKEND_UNREACHABLE_FIX,
        )
    if all(ml.model_version != model_version for ml in up):
        served = ", ".join(f"{ml.url} serves {ml.model_version}" for ml in up)
        raise AdapterError(
            f"the model to score with is {model_version}, but {served}; nothing was written",
            "point --model-dir (or MODEL_DIR) at the backend's model folder",
        )
    return None
