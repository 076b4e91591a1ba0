"""Load a task's image the ways Label Studio serves it, as a numpy array.

Sources: ``/data/upload/...`` (and the ``/storage-data/uploaded/`` proxy), ``/data/local-files/?d=...``
(read straight from disk when ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` is set and holds the file),
``s3://``/``gs://``/``azure-blob://`` presigned through Label Studio, plain ``http(s)`` URLs, and
local paths (``file://`` or plain). Downloads go through the SDK's ``get_local_path``, which caches
them on disk by URL.

Authentication: a legacy token is sent as it is. A personal access token (a JWT refresh token) is
not accepted by Label Studio's file views, so it is first exchanged for an access token with the
SDK's ``LabelStudio`` client; the access token is cached and exchanged again when Label Studio
answers 401.

Images come back as (H, W, channels) arrays in their stored dtype: grayscale (H, W, 1), RGB and
RGBA in that channel order (OpenCV's BGR is swapped), 16-bit stays 16-bit. The EXIF orientation is
applied, as browsers do when Label Studio shows the image, so that masks line up with what
annotators see.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

import numpy as np

from ml_backend.labelstudio.config import ProjectConfig

CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
LABEL_STUDIO_PREFIXES = (
    "/data/upload/", "/data/local-files", "/upload/", "upload/", "/storage-data/", "storage-data/uploaded"
)
DOWNLOAD_TIMEOUT_S = 60.0
_EXIF_ORIENTATION_TAG = 0x0112

_access_tokens: dict[tuple[str, str], str] = {}
_access_tokens_lock = threading.Lock()


class ImageLoadError(RuntimeError):
    """A task image could not be loaded; ``url`` is what was asked for, ``reason`` why it failed."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"Cannot load image {url!r}: {reason}")
        self.url = url
        self.reason = reason


def image_url_from_task(task: dict, config: ProjectConfig) -> str:
    """The image URL of a Label Studio task, from the data key the config's ``<Image>`` reads."""
    data = task.get("data") if isinstance(task, dict) else None
    task_name = f"Task {task.get('id')!r}" if isinstance(task, dict) else "The task"
    if not isinstance(data, dict):
        raise ValueError(f"{task_name} has no 'data' object; Label Studio tasks look like "
                         f'{{"id": 1, "data": {{"{config.image_key}": "/data/upload/1/x.png"}}}}')
    url = data.get(config.image_key)
    if not isinstance(url, str) or not url.strip():
        raise ValueError(
            f"{task_name} has no image URL under data[{config.image_key!r}] (data keys: "
            f"{', '.join(map(str, data)) or 'none'}); the config's <Image name={config.image_name!r} "
            f'value="${config.image_key}"> reads it there'
        )
    return url.strip()


def load_task_image(
    url: str,
    *,
    task_id: int | None = None,
    label_studio_url: str | None = None,
    api_key: str | None = None,
    cache_dir: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> np.ndarray:
    """Load the image at ``url`` (any form Label Studio puts in task data) as an (H, W, C) array.

    ``label_studio_url`` and ``api_key`` default to the ``LABEL_STUDIO_URL`` (or
    ``LABEL_STUDIO_HOST``) and ``LABEL_STUDIO_API_KEY`` environment variables; ``task_id`` is needed
    for cloud storage URIs, which Label Studio presigns per task; ``cache_dir`` is where downloads
    are cached (the SDK's default cache otherwise); ``timeout`` bounds each HTTP request.
    Raises ImageLoadError with the reason.
    """
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_cache_dir

    if not isinstance(url, str) or not url.strip():
        raise ImageLoadError(str(url), "the URL is empty")
    url = url.strip()
    if url.startswith(CLOUD_PREFIXES) and task_id is None:
        raise ImageLoadError(url, "cloud storage URIs are presigned per task by Label Studio; pass task_id")
    path = _document_root_path(url) or _local_path(url)
    if path is not None:
        return decode_image(_read(path, url), url)
    cache_dir = os.path.abspath(cache_dir or get_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    path = _download(url, task_id, label_studio_url, api_key, cache_dir, timeout)
    try:
        return decode_image(_read(path, url), url)
    except ImageLoadError:
        # a bad download must not be served from the cache next time; files outside the cache
        # (get_local_path may return Label Studio's own copy of an upload) are never touched
        if os.path.commonpath([os.path.abspath(path), cache_dir]) == cache_dir:
            os.remove(path)
        raise


def _local_path(url: str) -> str | None:
    """The file a plain local path or file:// URL names, None for URLs that must be downloaded."""
    if url.startswith("file://"):
        from urllib.request import url2pathname

        path = url2pathname(urlparse(url).path)
    elif url.startswith(("http://", "https://", *CLOUD_PREFIXES, *LABEL_STUDIO_PREFIXES)):
        return None
    else:
        path = url
    if not os.path.isfile(path):
        raise ImageLoadError(url, "no such file" if not os.path.exists(path) else "not a regular file")
    return path


def _document_root_path(url: str) -> str | None:
    """The file a /data/local-files/?d=... URL names under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT,
    when that is set and the file is there (read at call time, unlike the SDK, which reads the
    variable once when it is imported)."""
    import posixpath

    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
        local_files_resolver,
        resolve_local_storage_file,
        safe_build_path,
    )
    from label_studio_sdk._extensions.label_studio_tools.core.utils.params import get_env

    root = get_env("LOCAL_FILES_DOCUMENT_ROOT")
    # "/" would make every readable file a Local Storage file; the SDK refuses it too
    if not url.startswith("/data/local-files") or not root or os.path.abspath(root) == os.sep:
        return None

    def under_root(relative_path: str) -> str:
        return safe_build_path(root, posixpath.normpath(relative_path).lstrip("/"))

    try:
        with local_files_resolver(under_root):
            path = resolve_local_storage_file(url)
    except (FileNotFoundError, ValueError) as error:
        raise ImageLoadError(url, f"not a file under the local files root {root!r}: {error}") from None
    return path if os.path.isfile(path) else None


def _is_label_studio_url(url: str, label_studio_url: str) -> bool:
    if url.startswith(("http://", "https://")):
        return bool(label_studio_url) and urlparse(url).netloc == urlparse(label_studio_url).netloc
    return True


def _access_token(label_studio_url: str, api_key: str, *, renew: bool = False) -> str:
    """What to authenticate file downloads with: a legacy token as it is, a personal access token
    exchanged for a (cached) access token through the SDK client."""
    from label_studio_sdk import LabelStudio
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import is_jwt_well_formed

    if not is_jwt_well_formed(api_key):
        return api_key
    key = (label_studio_url, api_key)
    with _access_tokens_lock:
        if renew or key not in _access_tokens:
            client = LabelStudio(base_url=label_studio_url, api_key=api_key)
            _access_tokens[key] = client.tokens.refresh(refresh=api_key).access
        return _access_tokens[key]


class _TimeoutSession:
    """A requests session whose requests time out unless told otherwise (the SDK sets none)."""

    def __init__(self, timeout: float):
        import requests

        self._session = requests.Session()
        self._timeout = timeout

    def get(self, url, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return self._session.get(url, **kwargs)

    def close(self) -> None:
        self._session.close()


def _download(
    url: str,
    task_id: int | None,
    label_studio_url: str | None,
    api_key: str | None,
    cache_dir: str,
    timeout: float,
) -> str:
    import requests
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
        get_local_path,
        http_session,
        is_jwt_well_formed,
    )

    label_studio_url = (
        label_studio_url or os.getenv("LABEL_STUDIO_URL") or os.getenv("LABEL_STUDIO_HOST") or ""
    ).rstrip("/")
    api_key = api_key or os.getenv("LABEL_STUDIO_API_KEY") or ""
    needs_label_studio = _is_label_studio_url(url, label_studio_url)
    if needs_label_studio and not label_studio_url:
        raise ImageLoadError(url, "Label Studio serves it; set LABEL_STUDIO_URL (or pass label_studio_url)")
    if needs_label_studio and not api_key:
        raise ImageLoadError(url, "Label Studio needs an API key to serve it; set LABEL_STUDIO_API_KEY")
    session = _TimeoutSession(timeout)

    def fetch(renew_token: bool) -> str:
        token = _access_token(label_studio_url, api_key, renew=renew_token) if needs_label_studio else None
        with http_session(session):
            return get_local_path(url, cache_dir=cache_dir, hostname=label_studio_url or None,
                                  access_token=token, task_id=task_id)

    try:
        try:
            return fetch(renew_token=False)
        except requests.HTTPError as error:
            if _status(error) != 401 or not needs_label_studio or not is_jwt_well_formed(api_key):
                raise
            return fetch(renew_token=True)  # the cached access token expired: exchange the PAT again
    except requests.HTTPError as error:
        refused_by = urlparse(error.response.url).netloc if error.response is not None else ""
        blame_key = needs_label_studio and refused_by == urlparse(label_studio_url).netloc
        raise ImageLoadError(url, _http_reason(_status(error), blame_key)) from error
    except requests.RequestException as error:
        raise ImageLoadError(url, f"the download failed: {error}") from error
    except Exception as error:  # the SDK client raises ApiError, get_local_path bare exceptions
        raise ImageLoadError(url, f"{type(error).__name__}: {error}") from error
    finally:
        session.close()


def _status(error) -> int | None:
    return error.response.status_code if error.response is not None else None


def _http_reason(status: int | None, blame_key: bool) -> str:
    if status in (401, 403):
        hint = (
            " (check LABEL_STUDIO_API_KEY: a personal access token or, where the organisation allows "
            "them, a legacy token)" if blame_key else ""
        )
        return f"HTTP {status}: not authorised{hint}"
    if status == 404:
        return "HTTP 404: not found"
    return f"HTTP {status}"


def _read(path: str, url: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ImageLoadError(url, f"cannot read {path}: {error.strerror}") from None


def _exif_orientation(data: bytes) -> int:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # formats Pillow cannot read have no orientation it could tell us about
        return 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF orientation 2..8 upright (the transforms of the EXIF spec)."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    if orientation not in transforms:
        return image
    return np.ascontiguousarray(transforms[orientation](image))


def decode_image(data: bytes, url: str) -> np.ndarray:
    """Decode image file bytes to (H, W, C) in their stored dtype; ``url`` is named in errors."""
    import cv2

    if not data:
        raise ImageLoadError(url, "the file is empty")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageLoadError(url, f"the {len(data)} bytes are not an image OpenCV can decode "
                                  f"(they start with {data[:12]!r})")
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return _apply_orientation(image, _exif_orientation(data))
