"""A small HTTP client for the API (standard library only), used by the demo and benchmarks."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from core.errors import ApiError

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
ZIP = {"Content-Type": "application/zip"}


class Client:
    """Calls the captioner API at `base_url` (no proxies: it is usually on loopback)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or default_api_key()
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def submit(self, image: bytes, wait: float = 0, **options: Any) -> dict:
        """POST /v1/jobs with base64 image data; `wait` asks the API to hold for the result."""
        headers = {"Prefer": f"wait={wait:g}"} if wait else {}
        body = {"image": base64.b64encode(image).decode(), **options}
        return self.request("POST", "/v1/jobs", body, headers)

    def submit_batch(self, images: list[bytes], **options: Any) -> dict:
        """POST /v1/batches with up to 100 images."""
        body = {"images": [base64.b64encode(i).decode() for i in images], **options}
        return self.request("POST", "/v1/batches", body)

    def job(self, job_id: str) -> dict:
        """GET /v1/jobs/{id}."""
        return self.request("GET", f"/v1/jobs/{job_id}")

    def wait_for(self, job_id: str, timeout: float = 300, poll_s: float = 0.1) -> dict:
        """Poll a job until its status is terminal."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")
            time.sleep(poll_s)

    def upload_dataset(self, archive: bytes, name: str = "dataset") -> dict:
        """POST /v1/datasets with a zip or tar archive as the body."""
        return json.loads(self.get_bytes(f"/v1/datasets?name={name}", "POST", archive, ZIP))

    def wait_for_run(self, run_id: str, seen=None, timeout: float = 3600) -> dict:
        """Poll a training run until it ends, passing each state to `seen` if given."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.request("GET", f"/v1/training-runs/{run_id}")
            if seen is not None:
                seen(run)
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"training run {run_id} is still {run['status']}")
            time.sleep(0.5)

    def request(self, method: str, path: str, body: Any = None, headers=None) -> dict:
        """Send a JSON request and decode the JSON answer; raises ApiError on 4xx/5xx."""
        data = json.dumps(body).encode() if body is not None else None
        return json.loads(self.get_bytes(path, method, data, headers or {}))

    def get_bytes(
        self, path: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None
    ) -> bytes:
        """The raw body of a response (for .npy and .png downloads)."""
        request = urllib.request.Request(self.base_url + path, data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            problem = json.loads(exc.read() or b"{}")  # RFC 9457, with `code`
            raise ApiError(
                exc.code, problem.get("code", "?"), problem.get("detail", ""), problem
            ) from None


def default_api_key(data_dir: str | Path | None = None) -> str | None:
    """`CAPTIONER_API_KEY`, else the embedded mode's key file in the data directory (default
    `CAPTIONER_DATA_DIR` or ./captioner-data), else None."""
    if os.environ.get("CAPTIONER_API_KEY"):
        return os.environ["CAPTIONER_API_KEY"].strip()
    folder = Path(data_dir or os.environ.get("CAPTIONER_DATA_DIR") or "captioner-data")
    path = folder / "api-key"
    return path.read_text().strip() if path.is_file() else None
