"""Service settings: environment variables with the prefix DIFFUSETV_, validated at start-up."""

from __future__ import annotations

import ipaddress
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.cpus import usable_cpus
from app.core.leases import MAX_LEASE_S
from model_store.refs import parse_ref
from model_store.store import Store


class Settings(BaseSettings):
    """One place for every knob of the API and the worker (DESIGN.md, Processes)."""

    model_config = SettingsConfigDict(env_prefix="DIFFUSETV_", extra="ignore", frozen=True)

    redis_url: str | None = Field(None, description="Redis to use; unset means `diffusetv up` starts one")
    redis_password_file: Path | None = Field(
        None, description="a file holding the Redis password, put into REDIS_URL (keeps it out of the environment)"
    )
    model: str = Field("emoji32", description="default model reference, NAME or NAME@VERSION")
    models: str | None = Field(
        None, description="comma-separated references that workers without --model serve; unset: the default model"
    )
    kind_modules: str | None = Field(None, description="comma-separated modules that register more model kinds")
    model_store: Path | None = Field(
        None, description="the user store, where imports go; unset: $XDG_DATA_HOME/diffusetv/models (model_store.store)"
    )
    bundled_models: bool = Field(True, description="serve the bundled models beside the user store's")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = Field(False, description="CPU workers: run the network through torch.compile (needs c++)")
    probe_cache: Path | None = Field(
        None, description="a directory where workers keep their kernel probes (not in the store); unset: probe at load"
    )
    torch_threads: int = Field(
        default_factory=usable_cpus, ge=1, le=1024, description="torch threads per worker; default: usable CPUs"
    )
    # 1024: GPU workers batch far more than CPU ones (docs/BENCHMARKS.md: the H200 figures peak at 128-512 rows).
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_batch_wait_ms: int = Field(5, ge=0, le=10_000)
    preview_every_steps: int = Field(
        1,
        ge=1,
        le=1000,
        description="previews (for jobs that ask) at most every this many steps, besides the last; at most 11 a job "
        "anyway. A latent model's preview decodes the step's x0 through its VAE",
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=64,
        le=2**24,
        description="MB a worker's model may take (weights, its largest call, its batch); caps MAX_BATCH_SIZE and the "
        "probe's reference call; unset: 90% of the GPU's memory, or 80% of the machine's",
    )
    result_ttl: int = Field(86_400, ge=60, le=30 * 86_400, description="seconds a result and its job are kept")
    job_timeout: int = Field(
        600,
        ge=5,
        le=86_400,
        description="seconds before a running job fails; a model that records its FLOPs may get more",
    )
    min_gflops: float = Field(
        20.0,
        gt=0,
        le=1e9,
        description="the slowest sustained rate (GFLOP/s) a worker is assumed to reach: a model that records its FLOPs "
        "gives its jobs the time their work takes at it (never less than JOB_TIMEOUT)",
    )
    max_job_timeout: int = Field(
        6 * 3600, ge=5, le=86_400, description="the longest time a job may be given; a longer one is refused (422)"
    )
    max_queue: int = Field(1000, ge=1, le=1_000_000, description="queued jobs before 429")
    max_retries: int = Field(2, ge=0, le=10, description="re-runs after a worker death")
    heartbeat_s: int = Field(5, ge=1, le=300, description="worker heartbeat period; the TTL is twice this")
    api_keys: str | None = Field(None, description="comma-separated bearer keys; unset means open")
    api_keys_file: Path | None = Field(None, description="a file of bearer keys, one per line, added to API_KEYS")
    auth_proxy: bool = Field(
        False, description="an authenticating proxy is in front: the API may bind a non-loopback address without keys"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65_535)
    # Capacity and per-client bounds (docs/RELIABILITY.md: what one client can cost).
    redis_pool_size: int = Field(64, ge=2, le=4096, description="Redis connections per API process (a blocking pool)")
    redis_pool_wait_s: float = Field(0.5, ge=0.01, le=30, description="longest wait for a pooled connection; then 429")
    max_followers: int = Field(32, ge=0, le=100_000, description="jobs that may join one model run besides its leader")
    client_jobs: int = Field(600, ge=1, le=10_000_000, description="jobs (cache hits included) per client per window")
    client_bytes: int = Field(8 * 2**20, ge=2**16, le=2**40, description="result bytes a client may store per window")
    client_compute: int = Field(
        100_000, ge=1_000, le=2**53, description="image-steps of model work a client's new runs may take per window"
    )
    quota_window_s: int = Field(3600, ge=1, le=30 * 86_400, description="length of the quota window")
    client_streams: int = Field(8, ge=1, le=10_000, description="concurrent event streams and long polls per client")
    stream_lease_s: float = Field(
        10.0, ge=1, le=MAX_LEASE_S, description="seconds a stream's or long poll's slot outlives its last renewal"
    )
    trusted_proxies: str | None = Field(
        None, description="comma-separated proxy addresses or networks (CIDR) whose X-Forwarded-For counts"
    )
    header_timeout_s: float = Field(
        10.0, ge=0.1, le=600, description="longest time a request head may take to arrive; then the connection closes"
    )
    body_timeout_s: float = Field(10.0, ge=0.1, le=600, description="longest time a request body may take to arrive")
    # Pictures in (app/core/pictures.py): what one request's image may cost the API.
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=64 * 64,
        le=2**30,
        description="decoded pixels (width x height, read from the file's header) an input image may have; more is "
        "refused before decoding. Pillow's own bound (Image.MAX_IMAGE_PIXELS) stays as a backstop",
    )
    image_body_bytes: int = Field(
        8 * 2**20, ge=2**16, le=2**30, description="body limit of the routes that take images (others keep 64 KiB)"
    )
    image_decodes: int = Field(
        2, ge=1, le=256, description="images decoded at once per API process, in threads; past them: a wait, then 503"
    )
    # Delivery (docs/API.md, Webhooks; docs/RELIABILITY.md, The notifier): webhooks, idempotent submits, /v1.
    webhook_secret: str | None = Field(
        None,
        description="without API keys: the secret (`whsec_` + base64) that signs every webhook; several, separated by "
        "spaces or commas, sign with each during a rotation. Unset (and no keys): webhooks are refused (422)",
    )
    webhook_secret_file: Path | None = Field(None, description="a file holding WEBHOOK_SECRET (compose's secrets)")
    webhook_secrets_file: Path | None = Field(
        None,
        description="with API keys: a JSON file {owner id: secret or [secrets]}, one per key's owner (`diffusetv owner "
        "-` prints a key's); a webhook from a key with no secret is refused (422)",
    )
    webhook_allow_nets: str | None = Field(
        None,
        description="comma-separated networks (CIDR) webhooks may reach although not public, e.g. 127.0.0.1/32 for "
        "local development; plain http is allowed only to these. Default: none",
    )
    webhook_attempts: int = Field(8, ge=1, le=50, description="attempts of one delivery before it fails")
    webhook_base_delay_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="backoff base: retry k (from 1) waits a uniform draw from [0, base x 2^(k-1)] (full jitter)",
    )
    webhook_max_delay_s: float = Field(
        3600.0, gt=0, le=86_400, description="cap of one backoff wait, and of a Retry-After honoured"
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=120, description="total deadline of one delivery attempt: connect, send and read together"
    )
    webhook_lease_margin_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="what a notifier's claim allows beyond two attempt deadlines and the wait for a host slot: a "
        "delivery whose notifier died is sent again this long after its lease began (tests shorten it)",
    )
    webhook_max_response_bytes: int = Field(65_536, ge=0, le=2**24, description="bytes of a receiver's answer read")
    webhook_per_host: int = Field(4, ge=1, le=1024, description="concurrent deliveries to one host, per notifier")
    webhook_concurrency: int = Field(32, ge=1, le=4096, description="concurrent deliveries per notifier")
    webhook_jitter_seed: int | None = Field(None, description="seed of the backoff jitter (tests); unset: random")
    idempotency_window_s: int = Field(
        86_400, ge=60, le=30 * 86_400, description="how long an Idempotency-Key maps to the job it made"
    )
    openai_wait_s: float = Field(
        60.0, gt=0, le=600, description="POST /v1/images/generations waits this long for its jobs, then answers 408"
    )
    public_url: str | None = Field(
        None, description="the API's public base URL (e.g. https://tv.example.com): absolute URLs in /v1 answers"
    )
    results: str = Field(
        "redis",
        description="where results (PNGs, strips, latents, previews, inputs) are kept: `redis`, `file:///dir` or "
        "`s3://bucket/prefix` (app.core.results)",
    )
    results_redirect: bool = Field(
        False, description="s3: GET image.png and strip.png answer 307 to a presigned URL instead of the bytes"
    )
    results_presign_s: int = Field(300, ge=1, le=7 * 86_400, description="s3: how long a presigned URL is valid")
    results_retry_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="how long a worker keeps trying to store a result (backoff) before it fails the job with "
        "'result store unavailable'; at most half of JOB_TIMEOUT (results_retry_window_s)",
    )
    results_sweep_s: float = Field(
        60.0, gt=0, le=86_400, description="how often the reaper sweeps objects that no live job uses any more"
    )
    results_sweep_batch: int = Field(200, ge=1, le=100_000, description="objects deleted per sweep, at most")
    s3_endpoint_url: str | None = Field(
        None, description="the S3 endpoint (e.g. http://seaweedfs:8333); unset: AWS_ENDPOINT_URL or AWS's own"
    )
    s3_public_url: str | None = Field(
        None, description="the endpoint that clients reach, for which presigned URLs are signed; unset: the endpoint"
    )
    s3_region: str | None = Field(None, description="unset: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="path style (http://host/bucket/key) for MinIO, SeaweedFS, Garage or moto"
    )
    s3_access_key_id: str | None = Field(None, description="unset: boto3's chain (AWS_ACCESS_KEY_ID, files, roles)")
    s3_secret_access_key: str | None = Field(None, description="unset: boto3's chain")
    s3_secret_access_key_file: Path | None = Field(None, description="a file holding S3_SECRET_ACCESS_KEY")
    s3_connect_timeout_s: float = Field(3.0, gt=0, le=120, description="one S3 connection attempt")
    s3_read_timeout_s: float = Field(10.0, gt=0, le=600, description="one S3 read")
    s3_max_attempts: int = Field(3, ge=1, le=10, description="botocore's attempts per S3 call (standard retries)")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text, or one JSON object a line")
    health_file: Path = Field(
        Path(tempfile.gettempdir()) / "diffusetv-worker.health",
        description="where a worker's main loop writes its next deadline, read by `diffusetv worker --check`",
    )

    @model_validator(mode="before")
    @classmethod
    def _redis_password(cls, values):
        """DIFFUSETV_REDIS_PASSWORD_FILE: its first line becomes REDIS_URL's password (user, host, db: the URL's)."""
        if not isinstance(values, dict) or not values.get("redis_password_file") or not values.get("redis_url"):
            return values
        path = Path(values["redis_password_file"])
        try:
            password = path.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            raise ValueError(f"DIFFUSETV_REDIS_PASSWORD_FILE: {path} is not a readable file with a password") from None
        refused = placeholder_problem(password)
        if refused:
            raise ValueError(f"DIFFUSETV_REDIS_PASSWORD_FILE: {refused}")
        return {**values, "redis_url": with_password(str(values["redis_url"]), password)}

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        parse_ref(value)  # raises on a malformed reference
        return value

    @field_validator("models", "kind_modules")
    @classmethod
    def _list(cls, value: str | None, info) -> str | None:
        items = [v.strip() for v in (value or "").split(",") if v.strip()]
        for item in items:
            if info.field_name == "models":
                parse_ref(item)  # raises on a malformed reference
            elif not all(part.isidentifier() for part in item.split(".")):
                raise ValueError(f"{item!r} is not a module name")
        return ",".join(items) or None

    @field_validator("trusted_proxies", "webhook_allow_nets")
    @classmethod
    def _networks(cls, value: str | None) -> str | None:
        items = [v.strip() for v in (value or "").split(",") if v.strip()]
        for item in items:
            try:
                ipaddress.ip_network(item)
            except ValueError as exc:
                raise ValueError(f"{exc} (list addresses, or networks such as 10.0.0.0/8)") from None
        return ",".join(items) or None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be an http(s) base URL such as https://tv.example.com (no query)")
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, values):
        """WEBHOOK_SECRET_FILE and S3_SECRET_ACCESS_KEY_FILE: their content becomes WEBHOOK_SECRET and
        S3_SECRET_ACCESS_KEY (API_KEYS_FILE and REDIS_PASSWORD_FILE are the other secrets' files)."""
        if not isinstance(values, dict):
            return values
        for name in ("webhook_secret", "s3_secret_access_key"):
            if not values.get(f"{name}_file"):
                continue
            path = Path(values[f"{name}_file"])
            try:
                text = path.read_text().strip()
            except OSError:
                raise ValueError(f"DIFFUSETV_{name.upper()}_FILE: {path} is not a readable file") from None
            values = {**values, name: text}
        return values

    @model_validator(mode="after")
    def _webhook_secrets(self) -> Settings:
        from app.core.signing import parse_secrets, read_secrets_file

        try:
            parse_secrets(self.webhook_secret or "")
            if self.webhook_secrets_file is not None:
                read_secrets_file(self.webhook_secrets_file)
        except ValueError as exc:
            raise ValueError(f"webhook secrets: {exc}") from None
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> Settings:
        if self.max_job_timeout < self.job_timeout:
            raise ValueError(
                f"DIFFUSETV_MAX_JOB_TIMEOUT ({self.max_job_timeout}) must be at least DIFFUSETV_JOB_TIMEOUT "
                f"({self.job_timeout})"
            )
        return self

    @model_validator(mode="after")
    def _results(self) -> Settings:
        from app.core.results import location

        try:
            scheme, _ = location(self.results)
        except ValueError as exc:
            raise ValueError(f"DIFFUSETV_RESULTS: {exc}") from None
        if self.results_redirect and scheme != "s3":
            raise ValueError("DIFFUSETV_RESULTS_REDIRECT needs an s3:// result store (DIFFUSETV_RESULTS)")
        for name in ("s3_endpoint_url", "s3_public_url"):
            value = getattr(self, name)
            if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc):
                raise ValueError(f"DIFFUSETV_{name.upper()}: {value!r} is not an http(s) URL")
        return self

    @model_validator(mode="after")
    def _keys(self) -> Settings:
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"DIFFUSETV_API_KEYS_FILE: {self.api_keys_file} is not a readable file")
        for key in self.keys:
            if len(key) < 16:
                raise ValueError("DIFFUSETV_API_KEYS: every API key must be at least 16 characters")
            if placeholder_problem(key):
                raise ValueError(f"DIFFUSETV_API_KEYS: {placeholder_problem(key)}")
        return self

    @property
    def keys(self) -> list[str]:
        listed = (self.api_keys or "").split(",")
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text().splitlines()
            listed += [k for line in lines if not line.lstrip().startswith("#") for k in line.split(",")]
        return sorted({k.strip() for k in listed if k.strip()})

    @property
    def proxies(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """TRUSTED_PROXIES as networks (an address is a network of one)."""
        return [ipaddress.ip_network(p) for p in (self.trusted_proxies or "").split(",") if p]

    @property
    def webhook_nets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """WEBHOOK_ALLOW_NETS as networks."""
        return [ipaddress.ip_network(p) for p in (self.webhook_allow_nets or "").split(",") if p]

    @property
    def served_models(self) -> list[str]:
        """DIFFUSETV_MODELS as a list of references; the default model when unset."""
        return (self.models or self.model).split(",")

    def store(self) -> Store:
        """The models served: the user store, then (unless BUNDLED_MODELS is false) the bundled ones."""
        return Store.layered(self.model_store, self.bundled_models)

    @property
    def extra_kind_modules(self) -> list[str]:
        return (self.kind_modules or "").split(",") if self.kind_modules else []

    @property
    def results_retry_window_s(self) -> float:
        """How long a worker tries to store a result: RESULTS_RETRY_S, kept below JOB_TIMEOUT (at most half of it), so
        that the job fails with the store's error rather than a timeout."""
        return min(self.results_retry_s, self.job_timeout / 2)

    @property
    def heartbeat_ttl(self) -> int:
        return 2 * self.heartbeat_s

    def pending_ttl(self, timeout: int) -> int:
        """TTL of a job that has not ended (record, events, run, RQ job) whose runs may take `timeout` seconds each (its
        RQ timeout, app.core.timeouts): the longest legitimate wait, a queue wait of up to RESULT_TTL and `timeout` x
        (MAX_RETRIES + 1) of runs. Refreshed when its run starts; RESULT_TTL once it ends."""
        return self.result_ttl + timeout * (self.max_retries + 1)

    def exposure_problem(self) -> str | None:
        """Why the API must not start on HOST (an open API on the network), or None."""
        if self.keys or self.auth_proxy or is_loopback(self.host):
            return None
        return (
            f"refusing to serve an open API on {self.host}: set DIFFUSETV_API_KEYS (or DIFFUSETV_API_KEYS_FILE), "
            "bind to 127.0.0.1, or set DIFFUSETV_AUTH_PROXY=true when an authenticating proxy is in front"
        )


PLACEHOLDERS = ("change-me", "changeme", "replace-me", "placeholder")  # words of the examples' stand-ins


def placeholder_problem(secret: str, min_length: int = 16) -> str | None:
    """Why a password or key is an example's placeholder rather than a generated secret, or None."""
    if any(word in secret.lower() for word in PLACEHOLDERS):
        return (
            "that is a placeholder, not a generated secret (python3 -c 'import secrets; print(secrets.token_hex(24))')"
        )
    if len(secret) < min_length:
        return f"a secret must be at least {min_length} characters"
    return None


def with_password(url: str, password: str) -> str:
    """The URL with this password, percent-encoded; its user name (an ACL user) is kept."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
