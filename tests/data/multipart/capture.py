"""Capture multipart/form-data bodies byte-exact from real clients, as test fixtures.

Run once by hand from the repository root (curl on PATH; requests and urllib3 importable; httpx
optional, e.g. PYTHONPATH=/tmp/httpx where `pip install --target /tmp/httpx httpx` put it):

    python tests/data/multipart/capture.py

A throwaway HTTP server on 127.0.0.1 (port 0) records each request. Every case writes
`<client>-<case>.body` (the body exactly as received) and an entry in `manifest.json`: the
request's Content-Type, the client's version, and the parts the client was asked to send
(name, filename, content type, size, sha256). The parts come from this script, not from the
parser, so the tests compare the parser against what the client meant. The content types the
clients choose themselves (curl guesses from the file extension) are written down here after
reading the captured bodies once.
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
TEXT = b"first line\r\n--looks-like-a-boundary\r\n\r\n\rlast line, no newline"


def tiny_png() -> bytes:
    """A 3x2 RGB PNG, deterministic, under 100 bytes."""
    image = Image.new("RGB", (3, 2))
    image.putdata([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (9, 9, 9)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


PNG = tiny_png()


class Recorder:
    """One listening socket on 127.0.0.1:0; every request's Content-Type and body go to a queue."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d/infer/batch" % self.sock.getsockname()[1]
        self.requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            with conn:
                self.requests.put(self._read(conn))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    @staticmethod
    def _read(conn: socket.socket) -> tuple[str, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        fields = dict(
            line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:]
        )
        fields = {key.lower(): value for key, value in fields.items()}
        if fields.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        length = int(fields["content-length"])
        while len(body) < length:
            body += conn.recv(65536)
        return fields["content-type"], body

    def take(self) -> tuple[str, bytes]:
        return self.requests.get(timeout=10)


def part(name, filename, content_type, data) -> dict:
    return {
        "name": name,
        "filename": filename,
        "content_type": content_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def curl_cases(tmp: Path):
    png, txt = tmp / "tiny.png", tmp / "notes.txt"
    unicode_png = tmp / "my photo ü 名前.png"
    for path, data in ((png, PNG), (txt, TEXT), (unicode_png, PNG)):
        path.write_bytes(data)
    yield "one-file", ["-F", f"file=@{png}"], [part("file", "tiny.png", "image/png", PNG)]
    yield "batch", ["-F", f"files=@{png}", "-F", f"files=@{txt}", "-F", "note=hello"], [
        part("files", "tiny.png", "image/png", PNG),
        part("files", "notes.txt", "text/plain", TEXT),
        part("note", None, None, b"hello"),
    ]
    yield "unicode-filename", ["-F", f"file=@{unicode_png}"], [
        part("file", "my photo ü 名前.png", "image/png", PNG)
    ]
    # curl escapes '"' as %22 and sends backslashes raw (WHATWG form encoding).
    yield "quoted-filename", [
        "-F", f'file=@{png};filename="say \\"hi\\" C:\\\\x.png";type=application/octet-stream'
    ], [part("file", 'say "hi" C:\\x.png', "application/octet-stream", PNG)]
    yield "text-fields", ["-F", "note=hello", "-F", "empty=", "--form-string", "raw=@not-a-file;x"], [
        part("note", None, None, b"hello"),
        part("empty", None, None, b""),
        part("raw", None, None, b"@not-a-file;x"),
    ]


def capture_curl(recorder: Recorder, tmp: Path):
    version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
    for case, args, parts in curl_cases(tmp):
        subprocess.run(["curl", "-sS", "-o", "/dev/null", *args, recorder.url], check=True)
        yield f"curl-{case}", f"curl {version}", recorder.take(), parts


def capture_requests(recorder: Recorder):
    import requests

    version = f"requests {requests.__version__}"
    cases = [
        ("one-file", {"files": {"file": ("tiny.png", PNG, "image/png")}},
         [part("file", "tiny.png", "image/png", PNG)]),
        ("files-and-data", {
            "files": [("files", ("tiny.png", PNG, "image/png")), ("files", ("notes.txt", TEXT, "text/plain"))],
            "data": {"note": "hello", "top_k": "3"},
        }, [
            part("note", None, None, b"hello"),
            part("top_k", None, None, b"3"),
            part("files", "tiny.png", "image/png", PNG),
            part("files", "notes.txt", "text/plain", TEXT),
        ]),
        # A 2-tuple: requests sends no part Content-Type.
        ("unicode-filename", {"files": {"file": ('名前 "q" ü.png', PNG)}},
         [part("file", '名前 "q" ü.png', None, PNG)]),
    ]
    for case, kwargs, parts in cases:
        requests.post(recorder.url, **kwargs, timeout=10)
        yield f"requests-{case}", version, recorder.take(), parts


def capture_urllib3(recorder: Recorder):
    import urllib3

    body, content_type = urllib3.encode_multipart_formdata(
        [("file", ("tiny.png", PNG, "image/png")), ("note", "hello ü"), ("files", ("notes.txt", TEXT))]
    )
    urllib3.request("POST", recorder.url, body=body, headers={"Content-Type": content_type})
    parts = [
        part("file", "tiny.png", "image/png", PNG),
        part("note", None, None, "hello ü".encode()),
        part("files", "notes.txt", "text/plain", TEXT),  # urllib3 guesses from the extension
    ]
    yield "urllib3-encode-multipart", f"urllib3 {urllib3.__version__}", recorder.take(), parts


def capture_httpx(recorder: Recorder):
    try:
        import httpx
    except ImportError:
        print("httpx not importable: skipped", file=sys.stderr)
        return
    files = [("files", ("tiny.png", PNG, "image/png")), ("files", ("名前 ü.txt", TEXT))]
    httpx.post(recorder.url, files=files, data={"note": "hello"}, timeout=10)
    parts = [
        part("note", None, None, b"hello"),
        part("files", "tiny.png", "image/png", PNG),
        part("files", "名前 ü.txt", "text/plain", TEXT),  # httpx guesses from the extension
    ]
    yield "httpx-files-and-data", f"httpx {httpx.__version__}", recorder.take(), parts


def main() -> None:
    recorder = Recorder()
    manifest = {}
    with tempfile.TemporaryDirectory() as tmp:
        captures = [
            *capture_curl(recorder, Path(tmp)),
            *capture_requests(recorder),
            *capture_urllib3(recorder),
            *capture_httpx(recorder),
        ]
    for name, client, (content_type, body), parts in captures:
        (HERE / f"{name}.body").write_bytes(body)
        manifest[name] = {"client": client, "content_type": content_type, "parts": parts}
        print(f"{name}: {len(body)} bytes, {content_type}")
    text = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    (HERE / "manifest.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
