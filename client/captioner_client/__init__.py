"""A light client for the captioner HTTP API (httpx and numpy only).

    from captioner_client import Client

    with Client("http://127.0.0.1:8000") as api:
        job = api.wait(api.submit("shapes.png"))
        print(job.caption.caption)

Errors, in one tree (see `captioner_client._errors`):

    CaptionerError
    ├── ApiError                    an error answer: .status, .code, .detail, .problem
    ├── ServerUnreachable           no connection to the API (refused, unknown host, timed out):
    │                               .url, and the message says how to start a server
    └── WebhookVerificationError    a webhook not signed by the secret, or signed too long ago
"""

from captioner_client._client import Client, JobPage
from captioner_client._config import default_api_key, default_api_url
from captioner_client._errors import ApiError, CaptionerError, ServerUnreachable
from captioner_client._transport import RetryPolicy
from captioner_client._types import (
    Batch,
    Caption,
    Correction,
    Dataset,
    Job,
    ModelVersion,
    Ood,
    TrainingRun,
)
from captioner_client._webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "ApiError", "Batch", "Caption", "CaptionerError", "Client", "Correction", "Dataset", "Job",
    "JobPage", "ModelVersion", "Ood", "RetryPolicy", "ServerUnreachable", "TrainingRun",
    "WebhookVerificationError", "default_api_key", "default_api_url", "verify_webhook",
]  # fmt: skip
