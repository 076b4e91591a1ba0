"""Failures of the adapter that a user can act on: what went wrong, and how to fix it.

Label Studio reports most set-up mistakes as terse HTTP errors (401 "Invalid token.", 403 "URL resolves to a
reserved network address", 400 "Can't connect to ML backend"). :func:`explain` turns the SDK's exceptions
into an :class:`AdapterError` that names the step that failed and the usual fix, so the command line can
print one clear paragraph and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from label_studio_sdk.core.api_error import ApiError

LEGACY_TOKEN_FIX = (
    "this organisation has legacy API tokens disabled (the default in Label Studio 1.23 unless "
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true was set when it was first started). Either use a personal "
    "access token (Label Studio > Account & Settings > Personal Access Token) as the API key, or enable "
    "legacy tokens (Organization > Settings > API Tokens, or POST /api/jwt/settings)"
)
BAD_TOKEN_FIX = (
    "copy the token from Label Studio > Account & Settings (legacy token or personal access token) and pass "
    "it with --api-key or LABEL_STUDIO_API_KEY"
)
UNREACHABLE_FIX = (
    "start Label Studio, or pass its address with --label-studio-url or LABEL_STUDIO_URL "
    "(for example http://127.0.0.1:8080)"
)
BLOCKED_LOCAL_FIX = (
    "Label Studio refuses ML backends and webhooks on loopback/private addresses by default. Restart it "
    "with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false (both are needed: the second one also "
    "guards the webhook that connecting creates), or serve the backend on an address Label Studio allows"
)
BACKEND_AUTH_FIX = (
    "the backend requires basic auth: pass --basic-auth-user and --basic-auth-pass with the values of its "
    "BASIC_AUTH_USER and BASIC_AUTH_PASS"
)
BACKEND_UNREACHABLE_FIX = (
    "start the backend (label-studio-decomp serve --host 0.0.0.0 --port 9090) and give a URL that Label "
    "Studio itself can reach: inside Docker, 'localhost' is Label Studio's own container, so use the "
    "backend's service name or host.docker.internal"
)


class AdapterError(Exception):
    """A failure with a user-facing explanation; ``fix`` says what to change."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if self.fix is None else f"{self.problem}\nHow to fix: {self.fix}"


def error_detail(error: ApiError) -> str:
    """The human part of a Label Studio error body (detail and field errors), else the raw body."""
    body: Any = error.body
    if not isinstance(body, dict):
        return str(body)
    parts = [str(body["detail"])] if body.get("detail") else []
    for field, messages in (body.get("validation_errors") or {}).items():
        text = "; ".join(str(message) for message in messages) if isinstance(messages, list) else messages
        parts.append(f"{field}: {text}")
    # Some messages embed an HTML "Learn more" link meant for the web page.
    return re.sub(r"<[^>]+>", "", " - ".join(parts)) or str(body)


def explain(
    error: Exception, *, action: str, label_studio_url: str, backend_url: str | None = None
) -> AdapterError:
    """An :class:`AdapterError` for an exception raised by the SDK while doing ``action``."""
    if isinstance(error, AdapterError):
        return error
    if isinstance(error, httpx.TransportError):
        return AdapterError(
            f"cannot reach Label Studio at {label_studio_url} while {action}: {error}", UNREACHABLE_FIX
        )
    if not isinstance(error, ApiError):
        return AdapterError(f"unexpected error while {action}: {type(error).__name__}: {error}")
    detail = error_detail(error)
    lowered = detail.lower()
    status = error.status_code
    if status == 401 and "legacy token" in lowered:
        return AdapterError(f"Label Studio rejected the API key while {action}: {detail}", LEGACY_TOKEN_FIX)
    if status == 401:
        return AdapterError(f"Label Studio rejected the API key while {action}: {detail}", BAD_TOKEN_FIX)
    if status == 403 and ("reserved network" in lowered or "ssrf" in lowered or "blocked" in lowered):
        return AdapterError(
            f"Label Studio blocked the backend URL {backend_url} while {action}: {detail}", BLOCKED_LOCAL_FIX
        )
    if "authentication parameters" in lowered:
        return AdapterError(
            f"the backend at {backend_url} refused Label Studio's credentials while {action}: {detail}",
            BACKEND_AUTH_FIX,
        )
    if "connect to ml backend" in lowered or "health check failed" in lowered:
        return AdapterError(
            f"Label Studio cannot reach the backend at {backend_url} while {action}: {detail}",
            BACKEND_UNREACHABLE_FIX,
        )
    return AdapterError(f"Label Studio answered HTTP {status} while {action}: {detail}")
