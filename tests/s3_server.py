"""An S3 of the test's own: moto's server as a process of its own on a free loopback port, with signatures checked.

moto checks the SigV4 signature of a request (and the caller's IAM policy) once its "initial no-auth action count"
has run out (settings.INITIAL_NO_AUTH_ACTION_COUNT, the INITIAL_NO_AUTH_ACTION_COUNT variable, infinite unless set;
POST /moto-api/reset-auth sets it in a running server and restarts the count). `MotoS3.start` makes an IAM user with
an access key and an s3:* policy, and the bucket, while it is still infinite, then sets it to 0: from then on a
wrong secret or an unknown key id is a 403.

moto does not check the signature of a presigned URL (query-string auth) in its own: with auth on, a GET without an
Authorization header fails inside it (500); with auth off, any signature passes. So the process serves moto's app
behind `PresignedAuth`, which checks a presigned request's signature and expiry (403 SignatureDoesNotMatch or
AccessDenied otherwise, as S3) and hands it on signed in its header, as a client signs it, for moto to check the
user's policy and answer.

    pytest_plugins = ["s3_server"]  # in a test module: the fixtures moto_s3 (a bucket of the test's own, on a
                                    # server of the module's own) and moto_s3_server; or MotoS3().start() ... stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest

from diffusetv.launch import free_port

REGION = "us-east-1"
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
FORBIDDEN = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'


@dataclass
class MotoS3:
    """moto's S3 (and IAM) at `endpoint`, with the bucket `bucket` and the credentials of a user allowed s3:*."""

    bucket: str = "diffusetv-results"
    prefix: str = "results"
    port: int = field(default_factory=free_port)
    region: str = REGION
    access_key_id: str = ""
    secret_access_key: str = ""
    proc: subprocess.Popen | None = None
    owner: bool = True  # False for a with_bucket view: stop() leaves the server to its owner
    log: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="moto-s3-", suffix=".log")[1]))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> MotoS3:
        """The server answering, the user, its key and the bucket made, signatures checked from then on."""
        command = [sys.executable, __file__, str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait(timeout)
        self._bootstrap()
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        return self

    def _wait(self, timeout: float) -> None:
        """Until moto's own API answers; RuntimeError with the end of its log if it exits or takes `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(f"{self.endpoint}/moto-api/data.json", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto's server did not answer on {self.endpoint}: {self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def _bootstrap(self) -> None:
        """The IAM user `diffusetv` with an access key and an s3:* policy, and the bucket (before auth is on)."""
        iam = self.client("iam", "bootstrap", "bootstrap")
        iam.create_user(UserName="diffusetv")
        key = iam.create_access_key(UserName="diffusetv")["AccessKey"]
        iam.put_user_policy(UserName="diffusetv", PolicyName="s3", PolicyDocument=json.dumps(POLICY))
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.client().create_bucket(Bucket=self.bucket)

    def with_bucket(self, bucket: str) -> MotoS3:
        """This server with another bucket, made now (stop() belongs to the server's owner, not to such a view)."""
        self.client().create_bucket(Bucket=bucket)
        return replace(self, bucket=bucket, owner=False)

    def client(self, service: str = "s3", key_id: str | None = None, secret: str | None = None):
        """A boto3 client of this server (path-style), with the user's credentials unless others are given."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=key_id or self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def env(self, prefix: str | None = None) -> dict[str, str]:
        """The environment of a stack process whose results go to this bucket, under `prefix` (else self.prefix)."""
        where = f"{self.bucket}/{self.prefix if prefix is None else prefix}".rstrip("/")
        return {
            "DIFFUSETV_RESULTS": f"s3://{where}",
            "DIFFUSETV_S3_ENDPOINT_URL": self.endpoint,
            "DIFFUSETV_S3_ADDRESSING_STYLE": "path",
            "DIFFUSETV_S3_REGION": self.region,
            "DIFFUSETV_S3_ACCESS_KEY_ID": self.access_key_id,
            "DIFFUSETV_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role probe when a credential is missing
        }

    def objects(self) -> list[str]:
        """The keys in the bucket, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted (the kernel's backlog), nothing is answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the server answers again, the requests it held first."""
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """The server killed (resumed first, if paused), its log removed; nothing for a with_bucket view."""
        if not self.owner:
            return
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.log.unlink(missing_ok=True)


@contextlib.contextmanager
def moto_server():
    """A moto server, started, and stopped on exit."""
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto_s3_server():
    """One moto server for a test module (it takes a second or two to start), stopped after the module."""
    with moto_server() as server:
        yield server


@pytest.fixture
def own_moto_s3():
    """A moto server of this test's own (a test that counts everything in it, or that outlives a module's server)."""
    with moto_server() as server:
        yield server


@pytest.fixture
def moto_s3(moto_s3_server):
    """A bucket of this test's own on the module's moto server (resumed after the test if it paused it)."""
    server = moto_s3_server.with_bucket(f"diffusetv-{uuid.uuid4().hex[:16]}")
    try:
        yield server
    finally:
        server.resume()


class PresignedAuth:
    """WSGI middleware: checks the SigV4 query signature and the expiry of a presigned request, then passes it on with
    the query's X-Amz-* parameters taken out and signed in an Authorization header instead (moto checks those)."""

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        if "HTTP_AUTHORIZATION" in environ or "X-Amz-Signature" not in query:
            return self.app(environ, start_response)
        try:
            credentials = _check_presigned(environ, query)
        except (KeyError, ValueError):
            return self.forbidden(start_response, "AuthorizationQueryParametersError", "Malformed presigned query.")
        except PermissionError as exc:
            return self.forbidden(start_response, *exc.args)
        _sign_in_header(environ, credentials, query["X-Amz-Credential"].split("/")[2])
        return self.app(environ, start_response)

    @staticmethod
    def forbidden(start_response, code: str, message: str) -> list[bytes]:
        """A 403 with S3's XML error body."""
        body = FORBIDDEN.format(code=code, message=message).encode()
        start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]


def _raw(environ) -> tuple[str, list[str]]:
    """The path as sent and the query's raw `name=value` parts."""
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
    path, _, query = raw_uri.partition("?")
    return path, [part for part in query.split("&") if part]


def _credentials(key_id: str):
    """The botocore Credentials of an IAM user's access key in this server; PermissionError for an unknown one."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.access_control import CreateAccessKeyFailure, IAMUserAccessKey

    try:
        return IAMUserAccessKey(DEFAULT_ACCOUNT_ID, "aws", key_id, {}).create_credentials()
    except CreateAccessKeyFailure:
        raise PermissionError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist.") from None


def _check_presigned(environ, query: dict[str, str]):
    """The credentials that signed this presigned request; PermissionError(code, message) when it is not valid."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    key_id, _, region, service, _ = query["X-Amz-Credential"].split("/")
    credentials = _credentials(key_id)
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if (datetime.now(UTC) - signed_at).total_seconds() > int(query["X-Amz-Expires"]):
        raise PermissionError("AccessDenied", "Request has expired")
    path, parts = _raw(environ)
    unsigned = "&".join(part for part in parts if not part.startswith("X-Amz-Signature="))
    names = query["X-Amz-SignedHeaders"].split(";")
    headers = {name: environ.get("HTTP_" + name.upper().replace("-", "_"), "") for name in names}
    url = f"http://{environ['HTTP_HOST']}{path}?{unsigned}"
    request = AWSRequest(method=environ["REQUEST_METHOD"], url=url, headers=headers)
    request.context["timestamp"] = query["X-Amz-Date"]
    auth = S3SigV4QueryAuth(credentials, service, region, expires=int(query["X-Amz-Expires"]))
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if expected != query["X-Amz-Signature"]:
        raise PermissionError("SignatureDoesNotMatch", "The request signature we calculated does not match.")
    return credentials


def _sign_in_header(environ, credentials, region: str) -> None:
    """The request without its X-Amz-* query parameters, signed in its Authorization header by the same key."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    path, parts = _raw(environ)
    query = "&".join(part for part in parts if not part.startswith("X-Amz-"))
    uri = f"{path}?{query}" if query else path
    request = AWSRequest(method=environ["REQUEST_METHOD"], url=f"http://{environ['HTTP_HOST']}{uri}")
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    environ.update(QUERY_STRING=query, RAW_URI=uri, REQUEST_URI=uri)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
        environ["HTTP_" + name.upper().replace("-", "_")] = request.headers[name]


def serve(port: int) -> None:
    """moto's server (as `python -m moto.server -H 127.0.0.1 -p PORT` runs it) behind PresignedAuth."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    os.environ["MOTO_PORT"] = str(port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = PresignedAuth(DomainDispatcherApplication(create_backend_app))
    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
