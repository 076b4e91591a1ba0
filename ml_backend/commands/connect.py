"""``label-studio-decomp connect``: connect the DECOMP backend to a Label Studio project and check that
Label Studio reached it (/health, /setup) and that annotation events will reach its trainer (the webhook)."""

from __future__ import annotations

import argparse
import os
import sys


def add_label_studio_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that talks to Label Studio shares."""
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument(
        "--label-studio-url", help="Label Studio address (default: $LABEL_STUDIO_URL or $LABEL_STUDIO_HOST)"
    )
    parser.add_argument(
        "--api-key",
        help="legacy API token or personal access token (default: $LABEL_STUDIO_API_KEY)",
    )


def add_environment_option(
    parser: argparse.ArgumentParser, flag: str, variable: str, help_text: str, *, otherwise: str = ""
) -> None:
    """An option whose default is the environment variable ``variable`` (named in the help, followed by
    ``otherwise``: what applies when neither is set)."""
    parser.add_argument(
        flag, default=os.environ.get(variable), help=f"{help_text} (default: ${variable}{otherwise})"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_label_studio_arguments(parser)
    parser.add_argument(
        "--backend-url", required=True, help="the backend's address as Label Studio reaches it"
    )
    add_environment_option(parser, "--basic-auth-user", "BASIC_AUTH_USER", "the backend's basic-auth user")
    add_environment_option(
        parser, "--basic-auth-pass", "BASIC_AUTH_PASS", "the backend's basic-auth password"
    )
    parser.add_argument("--title", default=None, help="the connection's title in Label Studio")


def run(args: argparse.Namespace) -> int:
    from adapters.connect import DEFAULT_BACKEND_TITLE, BasicAuth, LabelStudioSettings, connect_backend
    from adapters.errors import AdapterError

    try:
        if bool(args.basic_auth_user) != bool(args.basic_auth_pass):
            raise AdapterError(
                "basic auth needs both a user and a password",
                "pass both --basic-auth-user and --basic-auth-pass",
            )
        auth = BasicAuth(args.basic_auth_user, args.basic_auth_pass) if args.basic_auth_user else None
        settings = LabelStudioSettings.resolve(args.label_studio_url, args.api_key)
        connection = connect_backend(
            settings.client(),
            settings,
            args.project,
            args.backend_url,
            basic_auth=auth,
            title=args.title or DEFAULT_BACKEND_TITLE,
        )
    except AdapterError as error:
        print(f"label-studio-decomp connect: {error}", file=sys.stderr)
        return 1
    verb = "connected" if connection.created_backend else "already connected"
    print(
        f"Project {connection.project_id}: backend {connection.backend_url} {verb} "
        f"(ML backend {connection.ml_backend_id}, model {connection.model_version}); "
        f"webhook {connection.webhook_id} {'repaired' if connection.repaired_webhook else 'in place'}."
    )
    return 0
