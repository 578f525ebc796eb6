"""Results in an S3-compatible object store (AWS S3, MinIO, SeaweedFS, Garage, Ceph, moto), through boto3.

`DIFFUSETV_RESULTS=s3://bucket/prefix` puts the object `png/<sha256>.png` at the key `prefix/png/<sha256>.png`
(`png/<sha256>.png` without a prefix). boto3 is imported here only, when an s3 store is opened: the API and the
worker run without it otherwise (`pip install 'diffusetv[s3]'`).

Endpoint, region and credentials come from the DIFFUSETV_S3_* settings where they are set, else from boto3's own chain
(AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID, ~/.aws, instance roles); the region is us-east-1
when nothing names one. Every failure but "no such object" is StoreUnavailable, with a short message that names the
bucket: the worker retries it, the API answers 503.
"""

from __future__ import annotations

import base64
import hashlib
import os
from contextlib import contextmanager

from app.core.results import StoreUnavailable

INSTALL_HINT = "DIFFUSETV_RESULTS=s3://... needs boto3: pip install 'diffusetv[s3]'"
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})  # get_object's "no such object" (HEAD answers a bare 404)


def _boto3():
    """The boto3 module, or ImportError with the extra to install."""
    try:
        import boto3
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return boto3


def _failures() -> tuple[type[BaseException], ...]:
    """What a call may raise besides ClientError: botocore's own errors (EndpointConnectionError, ConnectTimeoutError,
    ReadTimeoutError, ConnectionClosedError, ResponseStreamingError, NoCredentialsError, ...) and what may slip past
    them from urllib3 or the socket."""
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    return BotoCoreError, HTTPError, OSError


def _content_type(name: str) -> str:
    """image/png for `.png` names; application/octet-stream for the rest (latents, inputs)."""
    return "image/png" if name.endswith(".png") else "application/octet-stream"


def _checksum(data: bytes) -> str:
    """x-amz-checksum-sha256 of `data`: the base64 of its SHA-256 digest (S3 refuses the upload
    when the bytes it received do not match)."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _config(settings, **extra):
    """The botocore Config of a store's clients."""
    from botocore.config import Config

    return Config(
        connect_timeout=settings.s3_connect_timeout_s,  # botocore: connect_timeout, one connection attempt
        read_timeout=settings.s3_read_timeout_s,  # botocore: read_timeout, one socket read
        # botocore: retries.total_max_attempts counts the first attempt (AWS_MAX_ATTEMPTS' meaning), where
        # retries.max_attempts would count the retries only (1 would be 2 attempts)
        retries={"total_max_attempts": settings.s3_max_attempts, "mode": "standard"},
        s3={"addressing_style": settings.s3_addressing_style},  # botocore: s3.addressing_style (path for MinIO...)
        request_checksum_calculation="when_required",  # botocore: no CRC32 trailer of its own (we send SHA-256)
        response_checksum_validation="when_required",  # botocore: no checksum mode on reads unless asked
        **extra,
    )


def _region(settings, session) -> str:
    """settings.s3_region, else AWS_REGION (which botocore does not read), else AWS_DEFAULT_REGION or the profile's
    region (which it does), else us-east-1."""
    return settings.s3_region or os.environ.get("AWS_REGION") or session.region_name or "us-east-1"


def _session(settings):
    """A boto3 Session of this store's own (sessions are not thread-safe; the clients made from it are)."""
    key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
    if (key_id is None) != (secret is None):
        raise ValueError("DIFFUSETV_S3_ACCESS_KEY_ID and DIFFUSETV_S3_SECRET_ACCESS_KEY are set together, or neither")
    return _boto3().Session(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=settings.s3_region)


class S3Store:
    """Objects in one bucket, under one prefix. `put` is one PutObject, whole or not at all, checked by its SHA-256."""

    scheme = "s3"
    inline_previews = False

    def __init__(self, bucket: str, prefix: str, client, public_client) -> None:
        """`client` does the reads and writes; `public_client` signs the URLs that clients are sent to."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.public_client = public_client

    @classmethod
    def from_settings(cls, where: str, settings) -> S3Store:
        """The store at `where` ("bucket" or "bucket/prefix", from app.core.results.location) with the s3_* settings."""
        bucket, _, prefix = where.partition("/")
        session = _session(settings)
        region = _region(settings, session)
        endpoint = settings.s3_endpoint_url  # None: boto3's AWS_ENDPOINT_URL(_S3), else AWS's own
        client = session.client("s3", endpoint_url=endpoint, region_name=region, config=_config(settings))
        public = session.client(
            "s3",
            endpoint_url=settings.s3_public_url or endpoint,  # the host that presigned URLs name
            region_name=region,
            config=_config(settings, signature_version="s3v4"),  # botocore: signature_version, SigV4 query auth
        )
        return cls(bucket, prefix, client, public)

    def key(self, name: str) -> str:
        """The object key of `name`: prefix/name, or name alone."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, data: bytes) -> None:
        """PutObject, with its Content-Type and its x-amz-checksum-sha256 (a corrupted upload is refused)."""
        with self._failing("put", name):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(name),
                Body=data,
                ContentType=_content_type(name),
                ChecksumSHA256=_checksum(data),
            )

    def get(self, name: str) -> bytes | None:
        """GetObject's bytes, read whole (a timeout mid-body is StoreUnavailable too); None for no such object."""
        try:
            with self._failing("get", name):
                return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()
        except StoreUnavailable as exc:
            if _code(exc.__cause__) in MISSING:
                return None
            raise

    def delete(self, name: str) -> None:
        """DeleteObject; S3 answers a missing key as a success, and so does this."""
        with self._failing("delete", name):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def presign(self, name: str, expires_s: int) -> str:
        """A GET URL on the public endpoint, signed (SigV4, query string) for `expires_s` seconds; no request made."""
        with self._failing("presign", name):
            return self.public_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(name)}, ExpiresIn=expires_s
            )

    @contextmanager
    def _failing(self, verb: str, name: str):
        """Any failure of the block as StoreUnavailable("s3://bucket: get key: what"), the cause kept."""
        from botocore.exceptions import ClientError

        try:
            yield
        except ClientError as exc:
            raise StoreUnavailable(f"s3://{self.bucket}: {verb} {self.key(name)}: {_refusal(exc)}") from exc
        except _failures() as exc:
            raise StoreUnavailable(f"s3://{self.bucket}: {verb} {self.key(name)}: {exc}") from exc


def _code(exc: BaseException | None) -> str | None:
    """The error code of a ClientError (NoSuchKey, AccessDenied, SlowDown, 500...); None for anything else."""
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _refusal(exc) -> str:
    """A ClientError in a few words: its code, its HTTP status and a hint for the ones that a setting causes."""
    code, status = _code(exc), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    hints = {
        "NoSuchBucket": "no such bucket (create it, or fix DIFFUSETV_RESULTS)",
        "AccessDenied": "access denied (credentials, bucket policy; without s3:ListBucket a missing key is 403)",
        "InvalidAccessKeyId": "unknown access key id",
        "SignatureDoesNotMatch": "signature refused (check the secret access key)",
    }
    return f"{code} ({status}): {hints.get(code) or exc.response.get('Error', {}).get('Message') or exc}"
