"""Loading task images: local files, Label Studio's file views (with legacy and personal access
tokens), presigned cloud storage, plain http, and the errors users get when something is wrong."""

import base64
import io
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2
import jwt
import numpy as np
import pytest
from PIL import Image, ImageOps

from ml_backend.labelstudio.config import ProjectConfig
from ml_backend.labelstudio.images import ImageLoadError, decode_image, image_url_from_task, load_task_image

LEGACY_TOKEN = "legacy-token-123"


def png_bytes(array: np.ndarray) -> bytes:
    """PNG bytes of an (H, W), RGB or RGBA array (RGB order, like the loader returns)."""
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


@pytest.fixture(autouse=True)
def no_label_studio_environment(monkeypatch):
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN",
                 "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "HEARTEX_LOCAL_FILES_DOCUMENT_ROOT",
                 "LOCAL_FILES_DOCUMENT_ROOT"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- decoding local files


def test_grayscale_rgba_and_16_bit_pngs_keep_channels_and_dtype(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    rgba = rng.integers(0, 256, (13, 17, 4), dtype=np.uint8)
    deep_gray = rng.integers(0, 65536, (13, 17), dtype=np.uint16)
    deep_rgb = rng.integers(0, 65536, (13, 17, 3), dtype=np.uint16)
    for name, array in {"gray": gray, "rgba": rgba, "deep_gray": deep_gray, "deep_rgb": deep_rgb}.items():
        (tmp_path / f"{name}.png").write_bytes(png_bytes(array))

    loaded_gray = load_task_image(str(tmp_path / "gray.png"))
    assert loaded_gray.shape == (13, 17, 1) and loaded_gray.dtype == np.uint8
    np.testing.assert_array_equal(loaded_gray[:, :, 0], gray)
    (tmp_path / "with space").mkdir()
    (tmp_path / "with space" / "rgba.png").write_bytes(png_bytes(rgba))
    np.testing.assert_array_equal(load_task_image((tmp_path / "with space" / "rgba.png").as_uri()), rgba)
    loaded_deep = load_task_image(str(tmp_path / "deep_gray.png"))
    assert loaded_deep.dtype == np.uint16
    np.testing.assert_array_equal(loaded_deep[:, :, 0], deep_gray)
    np.testing.assert_array_equal(load_task_image(str(tmp_path / "deep_rgb.png")), deep_rgb)


def test_jpeg_comes_back_in_rgb_order(tmp_path):
    red = np.zeros((16, 24, 3), np.uint8)
    red[:, :, 0] = 220
    Image.fromarray(red).save(tmp_path / "red.jpg", quality=95)
    loaded = load_task_image(str(tmp_path / "red.jpg"))
    assert loaded.shape == (16, 24, 3)
    assert abs(int(loaded[8, 12, 0]) - 220) <= 3 and loaded[8, 12, 2] <= 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_a_browser(tmp_path, orientation):
    array = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "turned.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "turned.png")).convert("RGB"))
    np.testing.assert_array_equal(load_task_image(str(tmp_path / "turned.png")), expected)


def test_local_file_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_bytes(b"these are not pixels")
    with pytest.raises(ImageLoadError, match=r"empty\.png'.*the file is empty"):
        load_task_image(str(tmp_path / "empty.png"))
    with pytest.raises(ImageLoadError, match=r"20 bytes are not an image OpenCV can decode .*b'these are no"):
        load_task_image(str(tmp_path / "notes.png"))
    with pytest.raises(ImageLoadError, match=r"missing\.png'.*no such file"):
        load_task_image(str(tmp_path / "missing.png"))
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_task_image(str(tmp_path))
    with pytest.raises(ImageLoadError, match="the URL is empty"):
        load_task_image("  ")
    with pytest.raises(ImageLoadError, match="pass task_id"):
        load_task_image("s3://bucket/a.png")
    with pytest.raises(ImageLoadError, match="set LABEL_STUDIO_URL"):
        load_task_image("/data/upload/1/a.png")
    with pytest.raises(ImageLoadError, match="set LABEL_STUDIO_API_KEY"):
        load_task_image("/data/upload/1/a.png", label_studio_url="http://127.0.0.1:9")
    with pytest.raises(ImageLoadError, match="empty"):
        decode_image(b"", "memory")


def test_local_files_are_read_from_the_document_root(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    (tmp_path / "set 1").mkdir()
    (tmp_path / "set 1" / "a.png").write_bytes(png_bytes(array))
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path))
    # no Label Studio URL or key: the file is read from disk
    np.testing.assert_array_equal(load_task_image("/data/local-files/?d=set%201/a.png"), array)
    with pytest.raises(ImageLoadError, match="not a file under the local files root"):
        load_task_image("/data/local-files/?d=../../etc/passwd")


# ---------------------------------------------------------------- a Label Studio stand-in on 127.0.0.1


class FakeLabelStudio:
    """Serves files the way Label Studio's file views do, with its token rules."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.access_token = self.make_jwt("access")
        self.refreshes = 0
        self.authorizations: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if urlparse(self.path).path == "/api/token/refresh/" and body.get("refresh") == fake.pat:
                    fake.refreshes += 1
                    payload = json.dumps({"access": fake.access_token}).encode()
                    return self.send(200, payload, {"Content-Type": "application/json"})
                return self.send(401, b'{"detail": "bad refresh token"}')

            def do_GET(self):
                parsed = urlparse(self.path)
                if parsed.path.startswith("/public/"):
                    return self.reply_file(parsed.path[len("/public/"):])
                authorization = self.headers.get("Authorization")
                fake.authorizations.append(authorization)
                if authorization not in (f"Token {LEGACY_TOKEN}", f"Bearer {fake.access_token}"):
                    return self.send(401, b'{"detail": "Authentication credentials were not provided."}')
                if parsed.path.startswith("/data/upload/"):
                    return self.reply_file(parsed.path[len("/data/upload/"):])
                if parsed.path.startswith("/tasks/") and parsed.path.endswith("/presign/"):
                    cloud = urlparse(base64.urlsafe_b64decode(parse_qs(parsed.query)["fileuri"][0]).decode())
                    return self.send(303, headers={"Location": f"/public/{cloud.netloc}{cloud.path}"})
                return self.send(404, b"not found")

            def reply_file(self, name: str):
                if name not in fake.files:
                    return self.send(404, b"not found")
                return self.send(200, fake.files[name], {"Content-Type": "image/png"})

        self.pat = self.make_jwt("refresh")
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def make_jwt(kind: str) -> str:
        claims = {"token_type": kind, "exp": int(time.time()) + 3600, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, "a-test-signing-key-that-is-long-enough-for-hs256", algorithm="HS256")


@pytest.fixture
def label_studio():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    fake = FakeLabelStudio({"1/img.png": png_bytes(image), "bucket/scan.png": png_bytes(image[:, :, 0]),
                            "1/empty.png": b"", "1/text.png": b"<html>login</html>"})
    fake.image = image
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    fake.thread.join()


def test_uploads_download_with_a_legacy_token(label_studio, tmp_path):
    loaded = load_task_image("/data/upload/1/img.png", label_studio_url=label_studio.url,
                             api_key=LEGACY_TOKEN, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(loaded, label_studio.image)
    assert f"Token {LEGACY_TOKEN}" in label_studio.authorizations


def test_environment_variables_give_the_defaults(label_studio, tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LEGACY_TOKEN)
    np.testing.assert_array_equal(load_task_image("/data/upload/1/img.png", cache_dir=str(tmp_path)),
                                  label_studio.image)


def test_a_personal_access_token_is_exchanged_once_then_again_when_refused(label_studio, tmp_path):
    def load():
        # a fresh cache each time, so that every load downloads
        cache = tmp_path / f"cache{time.monotonic_ns()}"
        return load_task_image("/data/upload/1/img.png", label_studio_url=label_studio.url,
                               api_key=label_studio.pat, cache_dir=str(cache))

    np.testing.assert_array_equal(load(), label_studio.image)
    assert f"Bearer {label_studio.access_token}" in label_studio.authorizations
    assert f"Bearer {label_studio.pat}" not in label_studio.authorizations
    refreshes = label_studio.refreshes
    load()
    assert label_studio.refreshes == refreshes            # the access token is cached
    label_studio.access_token = label_studio.make_jwt("access")  # the cached one is no longer accepted
    np.testing.assert_array_equal(load(), label_studio.image)
    assert label_studio.refreshes > refreshes


def test_cloud_storage_is_presigned_through_label_studio(label_studio, tmp_path):
    loaded = load_task_image("s3://bucket/scan.png", task_id=7, label_studio_url=label_studio.url,
                             api_key=LEGACY_TOKEN, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(loaded[:, :, 0], label_studio.image[:, :, 0])


def test_plain_http_urls_need_no_label_studio(label_studio, tmp_path):
    loaded = load_task_image(f"{label_studio.url}/public/1/img.png", cache_dir=str(tmp_path))
    np.testing.assert_array_equal(loaded, label_studio.image)


def test_download_errors_say_what_went_wrong(label_studio, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ImageLoadError, match=r"HTTP 401: not authorised \(check LABEL_STUDIO_API_KEY"):
        load_task_image("/data/upload/1/img.png", label_studio_url=label_studio.url, api_key="wrong",
                        cache_dir=str(cache))
    with pytest.raises(ImageLoadError, match=r"/data/upload/1/missing\.png'.*HTTP 404: not found"):
        load_task_image("/data/upload/1/missing.png", label_studio_url=label_studio.url, api_key=LEGACY_TOKEN,
                        cache_dir=str(cache))
    with pytest.raises(ImageLoadError, match="the file is empty"):
        load_task_image("/data/upload/1/empty.png", label_studio_url=label_studio.url, api_key=LEGACY_TOKEN,
                        cache_dir=str(cache))
    with pytest.raises(ImageLoadError, match=r"not an image OpenCV can decode \(they start with b'<html>"):
        load_task_image(f"{label_studio.url}/public/1/text.png", cache_dir=str(cache))
    assert list(cache.iterdir()) == []      # bad downloads are not kept in the cache
    with pytest.raises(ImageLoadError, match="the download failed"):
        load_task_image("http://127.0.0.1:9/nothing-listens-here.png", cache_dir=str(cache), timeout=2)
    unknown_personal_token = FakeLabelStudio.make_jwt("refresh")
    with pytest.raises(ImageLoadError, match="bad refresh token"):
        load_task_image("/data/upload/1/img.png", label_studio_url=label_studio.url,
                        api_key=unknown_personal_token, cache_dir=str(cache))


# ---------------------------------------------------------------- task data


def test_image_url_comes_from_the_configs_data_key():
    config = ProjectConfig.from_label_config((Path(__file__).resolve().parent.parent / "examples"
                                              / "brush_project.xml").read_text())
    assert image_url_from_task({"id": 3, "data": {"image": " /data/upload/1/a.png "}}, config) == \
        "/data/upload/1/a.png"
    with pytest.raises(ValueError, match=r"Task 3 has no image URL under data\['image'\] \(data keys: photo"):
        image_url_from_task({"id": 3, "data": {"photo": "x.png"}}, config)
    with pytest.raises(ValueError, match="Task 4 has no 'data' object"):
        image_url_from_task({"id": 4}, config)


def test_decode_image_reads_bytes_in_memory():
    array = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(decode_image(png_bytes(array), "memory"), array)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="BMP")
    np.testing.assert_array_equal(decode_image(buffer.getvalue(), "memory"), array)
