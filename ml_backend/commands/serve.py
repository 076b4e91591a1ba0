"""``label-studio-decomp serve``: run the ML backend under gunicorn, the way Label Studio should reach it.

One worker process (models, the training thread and the model-version cache live in it; several
processes would each train and disagree on versions) with threads, so /health, /setup and /webhook answer
while a /predict runs; no request timeout, because training runs in the background and a large "Retrieve
predictions" batch may take long. Flags override the environment; the environment is what the app reads
(gunicorn imports it in its own process), so the flags are passed on as environment variables.
"""

from __future__ import annotations

import argparse
import os
import sys

WSGI_APP = "ml_backend.labelstudio.app:create_app_from_env()"

# flag destination -> (environment variable(s) it fills, default, help)
OPTIONS: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "host": (("HOST",), "0.0.0.0", "address to listen on (127.0.0.1 to accept local connections only)"),
    "port": (("PORT",), "9090", "port to listen on"),
    "threads": (("THREADS",), "4", "request threads of the single worker process"),
    "model_dir": (
        ("MODEL_DIR",),
        None,
        "where checkpoints and project state live (default ~/.local/share/label-studio-decomp/models)",
    ),
    "label_studio_url": (
        ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"),
        None,
        "Label Studio's URL as seen from the backend, for images and training data",
    ),
    "api_key": (
        ("LABEL_STUDIO_API_KEY",),
        None,
        "Label Studio legacy token or personal access token "
        "(prefer the environment variable: flags show in the process list)",
    ),
    "basic_auth_user": (("BASIC_AUTH_USER",), None, "require HTTP basic auth with this user"),
    "basic_auth_pass": (
        ("BASIC_AUTH_PASS",),
        None,
        "... and this password (prefer the environment variable)",
    ),
    "log_level": (("LOG_LEVEL",), "INFO", "DEBUG, INFO, WARNING or ERROR"),
    "device": (("DEVICE",), "auto", "torch device: auto, cpu, cuda, cuda:1, mps"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (variables, default, help_text) in OPTIONS.items():
        shown_default = f"; default {default}" if default is not None else ""
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=f"{help_text} [env {' or '.join(variables)}{shown_default}]",
        )


def serve_environment(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, str]:
    """The environment gunicorn and the app run with: flags, else the environment, else the defaults."""
    served = dict(environ)
    for name, (variables, default, _help) in OPTIONS.items():
        flag = getattr(args, name, None)
        current = next((environ[v] for v in variables if environ.get(v)), None)
        value = flag if flag is not None else current if current is not None else default
        if value is not None:
            served[variables[0]] = str(value)
    return served


def gunicorn_command(environment: dict[str, str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{environment['HOST']}:{environment['PORT']}",
        "--workers",
        "1",
        "--threads",
        environment["THREADS"],
        "--timeout",
        "0",
        # gunicorn 27 otherwise opens a control socket under $HOME, which may be read-only (containers)
        "--no-control-socket",
        "--log-level",
        environment["LOG_LEVEL"].lower(),
        "--access-logfile",
        "-",
        WSGI_APP,
    ]


def check_environment(environment: dict[str, str]) -> list[str]:
    """Problems that would only show later (at the first request or training run), found now."""
    from ml_backend.labelstudio.backend import BackendSettings

    problems = []
    try:
        BackendSettings.from_env(environment)
    except ValueError as error:
        problems.append(str(error))
    for name in ("PORT", "THREADS"):
        if not environment[name].isdigit() or int(environment[name]) < 1:
            problems.append(f"{name}={environment[name]!r} must be a positive whole number")
    if bool(environment.get("BASIC_AUTH_USER")) != bool(environment.get("BASIC_AUTH_PASS")):
        problems.append("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
    return problems


def run(args: argparse.Namespace) -> int:
    from ml_backend.labelstudio.backend import BackendSettings

    environment = serve_environment(args, dict(os.environ))
    problems = check_environment(environment)
    if problems:
        for problem in problems:
            print(f"label-studio-decomp serve: {problem}", file=sys.stderr)
        return 2
    settings = BackendSettings.from_env(environment)
    print(
        f"DECOMP backend on http://{environment['HOST']}:{environment['PORT']} "
        f"(model dir {settings.model_dir}, device {settings.device}, "
        f"basic auth {'on' if environment.get('BASIC_AUTH_USER') else 'off'})",
        file=sys.stderr,
    )
    if not (settings.label_studio_url and settings.api_key):
        print(
            "warning: LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY not set: images uploaded to Label Studio can "
            "only be read with the URL and token Label Studio sends on connecting, and training cannot "
            "pull annotations without them",
            file=sys.stderr,
        )
    sys.stderr.flush()
    # exec, not a child process: signals (Ctrl-C, docker stop, kill PID) reach gunicorn directly
    command = gunicorn_command(environment)
    os.execve(command[0], command, environment)
