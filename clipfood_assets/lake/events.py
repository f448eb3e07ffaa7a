"""Changes to a bucket as the S3 server publishes them: bucket notifications read from an SQS queue.

S3 (and the moto test server) sends ``s3:ObjectCreated:*`` and ``s3:ObjectRemoved:*`` events of a
bucket to an SQS queue once ``put_bucket_notification_configuration`` says so. Reading them costs
one request per ten changes, whatever the zone's size: the trusted-zone sensor learns of a change
in the next tick instead of after a full listing. Events can be lost (a queue purged, a tick that
failed after reading), so the listing stays the safety net.

The queue is this reader's own: what it reads, it deletes, events of other buckets included.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from urllib.parse import unquote_plus, urlsplit

from clipfood_assets.lake.base import LakeError

MAX_EXAMPLES = 3  # changed keys a report names


@dataclass
class BucketChanges:
    """What one read of the notifications found for a bucket and prefix."""

    count: int = 0  # object events under the prefix (an object changed twice counts twice)
    examples: list[str] = field(default_factory=list)  # the first few keys, for the report
    identity: str = ""  # digest of the events' ids: two reads never share one
    messages: int = 0  # messages read, every bucket's and the queue's test events included


def changed_keys(body: dict, bucket: str, prefix: str) -> list[str]:
    """The keys under ``prefix`` of ``bucket`` that an S3 event message (``{"Records": [...]}``) created or
    removed. MinIO's event records have the same shape (``eventName`` "s3:ObjectCreated:Put")."""
    keys = []
    for record in body.get("Records") or ():
        name = str(record.get("eventName", ""))
        if not name.removeprefix("s3:").startswith(("ObjectCreated", "ObjectRemoved")):
            continue
        s3 = record.get("s3") or {}
        if (s3.get("bucket") or {}).get("name") != bucket:
            continue
        key = unquote_plus(str((s3.get("object") or {}).get("key", "")))  # event keys are URL-encoded
        if key.startswith(prefix):
            keys.append(key)
    return keys


def _region(host: str) -> str | None:
    """``sqs.eu-west-1.amazonaws.com`` -> ``eu-west-1``; None for other hosts."""
    parts = host.split(".")
    return parts[1] if len(parts) >= 4 and parts[0] == "sqs" and host.endswith(".amazonaws.com") else None


class SqsBucketEvents:
    """An SQS queue that receives a bucket's notifications.

    Credentials: the ones given (the lake's), else boto3's own chain (AWS_* variables, an instance role).
    """

    def __init__(self, queue_url: str, access_key: str | None = None, secret_key: str | None = None,
                 region: str | None = None, timeout: float = 5.0):
        import boto3  # imported here: only a sensor configured with a queue pays for it
        from botocore.config import Config

        url = urlsplit(queue_url)
        if url.scheme not in ("http", "https") or not url.netloc or not url.path.strip("/"):
            raise LakeError(f"not an SQS queue URL: {queue_url!r} (expected https://sqs.<region>.amazonaws.com/"
                            "<account>/<queue>)")
        self.queue_url = queue_url
        self._client = boto3.client(
            "sqs", endpoint_url=f"{url.scheme}://{url.netloc}",
            region_name=region or _region(url.hostname or "") or "us-east-1",
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2}),
        )

    def __repr__(self) -> str:
        return f"SqsBucketEvents({self.queue_url!r})"

    def read(self, bucket: str, prefix: str, deadline: float, max_messages: int = 1000) -> BucketChanges:
        """Receive and delete the queued messages (ten a request, no waiting) until the queue is empty,
        ``max_messages`` were read or ``deadline`` (``time.monotonic()``) passed, after one request at
        least; a backlog is read on by the next call. LakeError when the queue cannot be reached."""
        from botocore.exceptions import BotoCoreError, ClientError

        changes, ids = BucketChanges(), hashlib.sha256()
        try:
            while changes.messages < max_messages:
                batch = self._client.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=min(10, max_messages - changes.messages),
                    WaitTimeSeconds=0).get("Messages", [])
                if not batch:
                    break
                for message in batch:
                    changes.messages += 1
                    ids.update(message["MessageId"].encode())
                    try:
                        body = json.loads(message.get("Body") or "{}")
                    except ValueError:
                        continue  # not an S3 event: nothing to act on, and deleted like the others
                    keys = changed_keys(body, bucket, prefix) if isinstance(body, dict) else []
                    changes.count += len(keys)
                    changes.examples.extend(keys[: MAX_EXAMPLES - len(changes.examples)])
                self._client.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
                if time.monotonic() >= deadline:
                    break
        except (BotoCoreError, ClientError) as exc:  # unreachable, refused, no such queue, bad credentials
            raise LakeError(f"cannot read notifications from {self.queue_url}: {exc}") from exc
        changes.identity = ids.hexdigest()[:16] if changes.messages else ""
        return changes
