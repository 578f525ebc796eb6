"""Makes the result store's bucket on the compose S3 server (profile s3), checks that the key may write in it,
and exits: 0 when the API and the workers can start.

Run once by the service s3-init (docker-compose.yml), from the API image (which has boto3), with the settings
that deploy/compose/s3.yml gives the API and the workers: DIFFUSETV_RESULTS (s3://bucket/prefix),
DIFFUSETV_S3_ENDPOINT_URL, DIFFUSETV_S3_ADDRESSING_STYLE, DIFFUSETV_S3_ACCESS_KEY_ID and
DIFFUSETV_S3_SECRET_ACCESS_KEY_FILE. While the server does not answer it tries again, for S3_INIT_WAIT_S
seconds (60); a refused key or a bucket that belongs to someone else fails at once.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

RETRIED = {"500", "502", "503", "504", "SlowDown", "ServiceUnavailable", "InternalError"}


def bucket_and_prefix(results: str) -> tuple[str, str]:
    parts = urlsplit(results)
    if parts.scheme != "s3" or not parts.netloc:
        raise SystemExit(f"s3-init: DIFFUSETV_RESULTS={results!r} is not s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


def client():
    secret_file = os.environ["DIFFUSETV_S3_SECRET_ACCESS_KEY_FILE"]
    with open(secret_file) as f:
        secret = f.readline().strip()
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("DIFFUSETV_S3_ENDPOINT_URL") or None,
        region_name=os.environ.get("DIFFUSETV_S3_REGION") or "us-east-1",
        aws_access_key_id=os.environ["DIFFUSETV_S3_ACCESS_KEY_ID"],
        aws_secret_access_key=secret,
        config=Config(
            s3={"addressing_style": os.environ.get("DIFFUSETV_S3_ADDRESSING_STYLE", "path")},
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def make_bucket(s3, bucket: str, prefix: str) -> None:
    try:
        s3.create_bucket(Bucket=bucket)
        print(f"s3-init: made bucket {bucket}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
        print(f"s3-init: bucket {bucket} is there")
    # What the API and the workers do: write, read and delete an object under the prefix.
    probe = f"{prefix}/.s3-init" if prefix else ".s3-init"
    s3.put_object(Bucket=bucket, Key=probe, Body=b"ok")
    if s3.get_object(Bucket=bucket, Key=probe)["Body"].read() != b"ok":
        raise SystemExit(f"s3-init: s3://{bucket}/{probe} did not read back as written")
    s3.delete_object(Bucket=bucket, Key=probe)


def main() -> int:
    bucket, prefix = bucket_and_prefix(os.environ.get("DIFFUSETV_RESULTS", ""))
    deadline = time.monotonic() + float(os.environ.get("S3_INIT_WAIT_S", "60"))
    s3 = client()
    while True:
        try:
            make_bucket(s3, bucket, prefix)
            print(f"s3-init: s3://{bucket}/{prefix} is ready")
            return 0
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if error.get("Code") not in RETRIED and status not in RETRIED:
                print(f"s3-init: {error.get('Code')}: {error.get('Message')} (bucket {bucket})", file=sys.stderr)
                return 1
            failure = f"{error.get('Code')} {status}"
        except BotoCoreError as exc:  # connection refused, timeout: the server is not up yet
            failure = str(exc)
        if time.monotonic() > deadline:
            print(f"s3-init: the S3 server did not answer in time: {failure}", file=sys.stderr)
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
