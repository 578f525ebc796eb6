"""Faults under load: bench.load's mixed traffic against several workers, two APIs, the notifier and an S3 result
store, while a seeded schedule kills and pauses them. Nothing accepted may be lost, and nothing may change its bytes.

    python -m bench.load --chaos [--minutes M] [--workers W] [--kill-every K] [--seed S] [--clients N]
                                 [--results s3|file|redis] [--json FILE]

The stack (127.0.0.1 only, each process in its own process group): redis-server with AOF (`appendfsync always`, as
compose runs it), moto's S3 server holding the results (`--results s3`, the default), W workers, two APIs behind no
balancer, `diffusetv notifier`, and a webhook receiver in this process. Every POST subscribes its job's `completed`
webhook and carries an `Idempotency-Key`.

The fault schedule (`--seed`: the same seed, the same schedule; it is printed first):
- every K seconds (jittered by a quarter), a busy worker (never worker 0) is SIGKILLed and started again RESTART_S
  later;
- once each: API 2 is SIGKILLed and started again; the notifier is SIGKILLed and started again; the store is paused
  with SIGSTOP for PAUSE_S, then SIGCONT; Redis is SIGKILLed and started again on its AOF.
Clients are spread over the two APIs. A client whose request fails to connect (or whose connection drops) sends it
again to the other API, as a load balancer would, POSTs with the same Idempotency-Key. A 503 inside a fault window
(Redis down or the store paused, and SETTLE_S after) is what the docs promise: it is counted on its own and the
request is sent again after Retry-After. Anything else is a failure.

Once the clients stop, accepted jobs get DRAIN_S to end and their webhooks WEBHOOK_DRAIN_S to arrive. The checks:
every job answered 202 is final (LOST = 0), and every job Redis holds was answered 202 to some request (one job per
request: a resend never made a second); no run completed twice (the workers' logs); every succeeded job's image is
served (none `succeeded` with a missing object) and, for at least SAMPLE_JOBS of them and for every job re-run after
a kill, its bytes equal a reference computed here, in process, for the same engine key; no status outside the
documented set; every ended job's `completed` webhook arrived at least once, under one `webhook-id`; the RSS of API
1 and worker 0 (never killed) grew less than RSS_LIMIT_PCT. Latency percentiles per request kind are printed before,
during and after each kind of fault, and the re-runs per job. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from bench.load import (
    DOCUMENTED,
    FINAL,
    HTTP_TIMEOUT_S,
    LOAD_MODEL,
    MAX_BACKOFF_S,
    Client,
    RssWatch,
    Tally,
    refusal,
    resolved_ref,
)
from bench.report import fmt, format_machine, machine, percentile, table, write_json
from diffusetv.launch import free_port, redis_server_binary, start_redis, wait_http

RESTART_S = 3.0  # a killed process is started again this long after
PAUSE_S = 5.0  # how long the store stays stopped (SIGSTOP)
REDIS_DOWN_S = 2.0
SETTLE_S = 5.0  # after a fault's process is back: 503s still count as the fault's, and "during" lasts this long
PHASE_S = 10.0  # "before" and "after" a fault: this long
DRAIN_S = 180.0
WEBHOOK_DRAIN_S = 90.0
SAMPLE_JOBS = 50
RSS_LIMIT_PCT = 10.0
RSS_WARMUP = 0.1  # the growth is counted from the RSS once this share of the load time has passed (a process's first
# minute of mixed traffic imports and builds what each kind of request needs: that is not a leak)
RESEND_FOR_S = 60.0  # a request is sent again (failover, a 503 in a fault window) for at most this long
FAILOVER_PAUSE_S = 0.2
LOST_ANSWER_RATE = 0.05  # of the 202s: acted on as lost, the POST sent again to the other API with the same key
READY_TIMEOUT_S = 180
BUSY_WAIT_S = 3.0  # a worker kill waits this long for a busy worker, then kills an idle one
HOOK_PATH = "/hook"


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load starts
    action: str  # kill_worker, kill_api, kill_notifier, pause_store, kill_redis


def schedule(seed: int, seconds: float, kill_every: float, store: bool) -> list[Fault]:
    """The faults of a run: a worker kill every `kill_every` s (jittered by a quarter), and each single fault once, at
    a seeded point of its own part of the run, apart from the others; all within the first 85% of the run."""
    rng = random.Random(seed)
    faults, t = [], kill_every
    while t < 0.85 * seconds:
        faults.append(Fault(round(t + rng.uniform(-kill_every / 4, kill_every / 4), 1), "kill_worker"))
        t += kill_every
    singles = ["kill_api", "kill_notifier", *(["pause_store"] if store else []), "kill_redis"]
    slot = 0.85 * seconds / (len(singles) + 1)
    for i, action in enumerate(singles, start=1):
        faults.append(Fault(round(slot * i + rng.uniform(-slot / 4, slot / 4), 1), action))
    return sorted(faults, key=lambda f: f.at)


@dataclass
class Window:
    """When a fault happened: from the signal to its process answering again (`back`), in load seconds."""

    action: str
    start: float
    back: float | None = None
    target: str = ""
    runs: list[str] = field(default_factory=list)  # a worker kill: the runs it held

    @property
    def end(self) -> float:
        return (self.back if self.back is not None else self.start) + SETTLE_S


class Receiver:
    """Webhook deliveries, recorded: a threaded HTTP server on 127.0.0.1 that answers 204 to every POST."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with contextlib.suppress(ValueError):
                    event = json.loads(body)
                    data = event.get("data", {})
                    with receiver.lock:
                        receiver.got.append({
                            "webhook_id": self.headers.get("webhook-id", ""),
                            "type": event.get("type"),
                            "job": data.get("id"),
                            "status": data.get("status"),
                        })  # fmt: skip
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{HOOK_PATH}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def completed(self) -> dict[str, set[str]]:
        """Job id -> the webhook-ids its `job.completed` deliveries arrived under."""
        out: dict[str, set[str]] = defaultdict(set)
        with self.lock:
            for got in self.got:
                if got["type"] == "job.completed":
                    out[got["job"]].add(got["webhook_id"])
        return out


class ChaosStack:
    """The processes of a chaos run, each started (and started again) from its own command and environment."""

    def __init__(self, store: Path, model: str, workers: int, threads: int, results: str, env: dict[str, str],
                 api_command: Sequence[str] | None = None) -> None:  # fmt: skip
        self.workdir = Path(tempfile.mkdtemp(prefix="diffusetv-chaos-"))
        self.results = results
        self.n_workers = workers
        self.ports = [free_port(), free_port()]
        self.redis_port = free_port()
        self.s3_port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.hook = ""  # the webhook receiver's URL, which every POST subscribes
        self.keep = False  # keep workdir (the logs) when the stack stops: a failed check
        self.commands: dict[str, list[str]] = {}
        self.api_command = list(api_command or [sys.executable, "-m", "diffusetv.cli", "api"])
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSETV_")}
        self.env = {
            **inherited,
            "DIFFUSETV_MODEL_STORE": str(store),
            "DIFFUSETV_BUNDLED_MODELS": "0",
            "DIFFUSETV_MODEL": model,
            "DIFFUSETV_TORCH_THREADS": str(threads),
            "DIFFUSETV_DEVICE": "cpu",
            "DIFFUSETV_HOST": "127.0.0.1",
            "DIFFUSETV_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DIFFUSETV_HEARTBEAT_S": "1",
            **self.results_env(),
            **env,
        }

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def redis_url(self) -> str:
        return self.env["DIFFUSETV_REDIS_URL"]

    def results_env(self) -> dict[str, str]:
        if self.results == "redis":
            return {"DIFFUSETV_RESULTS": "redis"}
        if self.results == "file":
            return {"DIFFUSETV_RESULTS": f"file://{self.workdir / 'results'}"}
        region = "us-east-1"
        return {
            "DIFFUSETV_RESULTS": "s3://diffusetv-chaos/results",
            "DIFFUSETV_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
            "DIFFUSETV_S3_ADDRESSING_STYLE": "path",
            "DIFFUSETV_S3_REGION": region,
            "DIFFUSETV_S3_ACCESS_KEY_ID": "chaos",
            "DIFFUSETV_S3_SECRET_ACCESS_KEY": "chaos-secret",
            "DIFFUSETV_S3_CONNECT_TIMEOUT_S": "2",
            "DIFFUSETV_S3_READ_TIMEOUT_S": "4",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def spawn(self, name: str, command: list[str] | None = None) -> subprocess.Popen:
        """Start `name` (again, from its recorded command when none is given), logging to workdir/<name>.log."""
        if command is not None:
            self.commands[name] = command
        env = dict(self.env)
        if name.startswith("api"):
            env["DIFFUSETV_PORT"] = str(self.ports[int(name[3:]) - 1])
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                self.commands[name], env=env, cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_redis(self) -> None:
        with (self.workdir / "redis.log").open("ab") as log:
            proc, _ = start_redis(
                redis_server_binary(prefer_path=True), self.workdir,
                *("--appendonly", "yes", "--appendfsync", "always", "--loglevel", "warning"),
                port=self.redis_port, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs["redis"] = proc

    def start_s3(self) -> None:
        import boto3

        self.spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)])
        endpoint = f"http://127.0.0.1:{self.s3_port}"
        if not wait_http(f"{endpoint}/moto-api/data.json", [self.procs["s3"]], 60):
            raise RuntimeError(f"moto's S3 server did not start:\n{self.log_tail('s3')}")
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="chaos", aws_secret_access_key="chaos-secret")  # fmt: skip
        s3.create_bucket(Bucket="diffusetv-chaos")

    def start(self) -> ChaosStack:
        self.start_redis()
        if self.results == "s3":
            self.start_s3()
        cli = [sys.executable, "-m", "diffusetv.cli"]
        for i in range(self.n_workers):
            self.spawn(f"worker{i}", [*cli, "worker"])
        for name in ("api1", "api2"):
            self.spawn(name, self.api_command)
        self.spawn("notifier", [*cli, "notifier"])
        for base in self.bases:
            if not wait_http(f"{base}/readyz", list(self.procs.values()), READY_TIMEOUT_S):
                logs = "".join(f"\n--- {n}\n{self.log_tail(n)}" for n in ("worker0", "api1", "api2"))
                raise RuntimeError(f"the stack did not become ready{logs}")
        return self

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, sig)
        if sig == signal.SIGKILL:
            self.procs[name].wait()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def logs(self, prefix: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob(f"{prefix}*.log")))

    def close(self) -> None:
        for name, proc in self.procs.items():
            if name == "s3" and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> ChaosStack:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.keep or exc[0] is not None:
            print(f"the stack's logs and Redis files are kept in {self.workdir}", flush=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class ChaosTally(Tally):
    """bench.load's tally, plus what a chaos run checks: when each request was made, the resends, the requests'
    keys, the 503s inside fault windows, the seeds and sha256 of the succeeded images."""

    began: float = 0.0
    timeline: list[tuple[float, str, int, float]] = field(default_factory=list)  # (start, kind, status, seconds)
    failovers: int = 0
    resent_posts: int = 0
    in_window_503: Counter[str] = field(default_factory=Counter)
    requests_by_key: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> the job id it was answered
    seeds: dict[str, int] = field(default_factory=dict)  # job id -> its seed
    lost_answers: int = 0  # 202s the client acted as if it never got, and sent again with the same key
    second_jobs: list[str] = field(default_factory=list)  # a resend answered with another job than the first

    def record(self, kind: str, status: int, seconds: float) -> None:
        super().record(kind, status, seconds)
        self.timeline.append((time.monotonic() - self.began - seconds, kind, status, seconds))


class ChaosClient(Client):
    """A bench.load client that fails over between the two APIs, resends a POST with its Idempotency-Key, and
    retries a 503 that falls in a fault window."""

    def __init__(self, https: list[httpx.AsyncClient], first: int, windows: list[Window], hook: str, **kw) -> None:
        super().__init__(https[first], **kw)
        self.https, self.current, self.windows, self.hook = https, first, windows, hook

    def in_window(self, t: float, until: float) -> str | None:
        """The fault whose window (Redis down, the store paused, and SETTLE_S after) meets load times `t` to `until`."""
        for w in reversed(self.windows):  # the latest fault first, where two windows meet
            if w.action in ("kill_redis", "pause_store") and w.start <= until and t <= (w.end if w.back else t):
                return w.action
        return None

    def accept(self, key: str, job: dict, seed: int) -> dict:
        tally: ChaosTally = self.tally  # type: ignore[assignment]
        tally.requests_by_key.setdefault(key, job["id"])
        tally.seeds[job["id"]] = seed
        tally.accept(job, self.http.headers.get("authorization", ""))
        return job

    async def call(self, kind: str, method: str, url: str, **kw) -> httpx.Response | None:
        tally: ChaosTally = self.tally  # type: ignore[assignment]
        tally.requests += 1
        deadline = time.monotonic() + RESEND_FOR_S
        while True:
            started = time.perf_counter()
            t0 = time.monotonic() - tally.began
            try:
                r = await self.https[self.current].request(method, url, **kw)
            except httpx.TransportError as exc:
                tally.transport_errors[f"{kind}: {type(exc).__name__}"] += 1
                if time.monotonic() > deadline:
                    return None
                self.current = 1 - self.current  # to the other API, as a load balancer would
                tally.failovers += 1
                tally.resent_posts += method == "POST"
                await asyncio.sleep(FAILOVER_PAUSE_S)
                continue
            seconds = time.perf_counter() - started
            fault = self.in_window(t0, t0 + seconds)
            if r.status_code == 503 and fault and time.monotonic() < deadline:
                tally.in_window_503[f"{kind} ({fault})"] += 1
                tally.timeline.append((t0, kind, 503, seconds))
                tally.resent_posts += method == "POST"
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), MAX_BACKOFF_S))
                continue
            self.tally.record(kind, r.status_code, seconds)
            return r

    async def submit(self, kind: str, body: dict) -> dict | None:
        key = str(uuid.uuid4())
        headers = {"Idempotency-Key": key}
        body = {**body, "webhook": self.hook}
        r = await self.call(kind, "POST", "/generate", json=body, headers=headers)
        tally: ChaosTally = self.tally  # type: ignore[assignment]
        if r is not None and r.status_code == 202 and self.rng.random() < LOST_ANSWER_RATE:
            # the answer "lost" (a timeout, a dropped connection): sent again, to the other API, with the same key;
            # its job is followed whatever the resend gets, and must be what the resend names
            self.accept(key, r.json(), body["seed"])
            self.current = 1 - self.current
            tally.lost_answers += 1
            again = await self.call(f"{kind}_resent", "POST", "/generate", json=body, headers=headers)
            self.tally.expect(f"POST /generate sent again ({kind})", again.status_code if again else 0, (202,))
            if again is not None and again.status_code == 202 and again.json()["id"] != r.json()["id"]:
                tally.second_jobs.append(again.json()["id"])
                self.accept(key, again.json(), body["seed"])  # followed too: it is one request's second job
        if r is None:
            return None
        if r.status_code == 202:
            return self.accept(key, r.json(), body["seed"])
        self.tally.expect(f"POST /generate ({kind})", r.status_code, (202, 429))
        if r.status_code == 429:
            self.tally.refusals[refusal(r)] += 1
            await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), MAX_BACKOFF_S))
        return None


async def pid_of_worker(conn, worker_id: str) -> int | None:
    from app.core import keys

    raw = await conn.get(keys.worker(worker_id))
    return json.loads(raw)["pid"] if raw else None


async def busy_workers(conn, stack: ChaosStack) -> dict[str, list[str]]:
    """Our process name -> the runs it is computing now (from the runs' records and the workers' heartbeats)."""
    from app.core import keys

    by_pid = {proc.pid: name for name, proc in stack.procs.items() if name.startswith("worker")}
    busy: dict[str, list[str]] = defaultdict(list)
    for raw in await conn.smembers(keys.RUNNING):
        run_id = raw.decode()
        worker = await conn.hget(keys.run(run_id), "worker")
        pid = await pid_of_worker(conn, worker.decode()) if worker else None
        if pid in by_pid:
            busy[by_pid[pid]].append(run_id)
    return busy


async def inflict(stack: ChaosStack, fault: Fault, rng: random.Random, windows: list[Window], began: float) -> None:
    """One fault of the schedule, then the process back (started again, answering), recorded in `windows`."""
    import redis.asyncio

    now = time.monotonic() - began
    if fault.action == "kill_worker":
        conn = redis.asyncio.Redis.from_url(stack.redis_url, socket_timeout=2, socket_connect_timeout=2)
        killable = [f"worker{i}" for i in range(1, stack.n_workers)]
        busy: dict[str, list[str]] = {}
        try:
            deadline = time.monotonic() + BUSY_WAIT_S
            while time.monotonic() < deadline:
                busy = {n: r for n, r in (await busy_workers(conn, stack)).items() if n in killable}
                if busy:
                    break
                await asyncio.sleep(0.1)
        except Exception:  # Redis away: kill one anyway
            busy = {}
        finally:
            await conn.aclose()
        target = rng.choice(sorted(busy) or killable)
        window = Window(fault.action, time.monotonic() - began, target=target, runs=busy.get(target, []))
        windows.append(window)
        stack.kill(target)
        await asyncio.sleep(RESTART_S)
        stack.spawn(target)
        window.back = time.monotonic() - began
        return
    window = Window(fault.action, now)
    windows.append(window)
    if fault.action == "kill_api":
        window.target = "api2"
        stack.kill("api2")
        await asyncio.sleep(RESTART_S)
        stack.spawn("api2")
        await asyncio.to_thread(wait_http, f"{stack.bases[1]}/healthz", [stack.procs["api2"]], READY_TIMEOUT_S)
    elif fault.action == "kill_notifier":
        window.target = "notifier"
        stack.kill("notifier")
        await asyncio.sleep(RESTART_S)
        stack.spawn("notifier")
    elif fault.action == "pause_store":
        window.target = "s3"
        stack.kill("s3", signal.SIGSTOP)
        await asyncio.sleep(PAUSE_S)
        stack.kill("s3", signal.SIGCONT)
    elif fault.action == "kill_redis":
        window.target = "redis"
        stack.kill("redis")
        await asyncio.sleep(REDIS_DOWN_S)
        await asyncio.to_thread(stack.start_redis)
        for base in stack.bases:
            await asyncio.to_thread(wait_http, f"{base}/readyz", [], READY_TIMEOUT_S)
    window.back = time.monotonic() - began


async def run_schedule(stack: ChaosStack, faults: list[Fault], seed: int, windows: list[Window], began: float) -> None:
    rng = random.Random(seed + 1)
    for fault in faults:
        await asyncio.sleep(max(0.0, began + fault.at - time.monotonic()))
        await inflict(stack, fault, rng, windows, began)


@dataclass
class Config:
    minutes: float
    clients: int
    workers: int
    kill_every: float
    seed: int
    steps: int
    results: str
    drain: float = DRAIN_S
    webhook_drain: float = WEBHOOK_DRAIN_S
    sample: int = SAMPLE_JOBS
    threads: int = 1
    max_requests: int = 100_000


async def load(stack: ChaosStack, cfg: Config, api_keys: list[str], faults: list[Fault]) -> dict:
    """The clients and the schedule together, then the drain; what was observed."""
    from bench.service import Seeds

    tally, windows = ChaosTally(), []
    began = tally.began = time.monotonic()
    stop_at = began + 60 * cfg.minutes
    drain_until = stop_at + cfg.drain
    api_rss = RssWatch(stack.procs["api1"].pid)
    worker_rss = RssWatch(stack.procs["worker0"].pid)
    watchers = [asyncio.create_task(w.watch(tally, began)) for w in (api_rss, worker_rss)]
    faults_task = asyncio.create_task(run_schedule(stack, faults, cfg.seed, windows, began))
    auth = [{"Authorization": f"Bearer {key}"} for key in api_keys]
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    pairs = [
        [httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT_S, headers=auth[i % len(auth)], limits=limits)
         for base in stack.bases]
        for i in range(cfg.clients)
    ]  # fmt: skip
    seeds = Seeds()
    try:
        await asyncio.gather(*(
            ChaosClient(
                https, i % 2, windows, stack.hook, rng=random.Random(cfg.seed * 1000 + i), tally=tally, seeds=seeds,
                steps=cfg.steps, stop_at=stop_at, drain_until=drain_until, max_requests=cfg.max_requests,
            ).run()
            for i, https in enumerate(pairs)
        ))  # fmt: skip
        await faults_task  # a fault that began just before the end finishes
        await drain(stack, windows, tally, drain_until)
    finally:
        faults_task.cancel()
        for task in watchers:
            task.cancel()
        for https in pairs:
            for http in https:
                await http.aclose()
    return {"tally": tally, "windows": windows, "api_rss": api_rss, "worker_rss": worker_rss,
            "wall_s": time.monotonic() - began}  # fmt: skip


async def drain(stack: ChaosStack, windows: list[Window], tally: ChaosTally, until: float) -> None:
    """Follow every accepted job that has not ended, through API 1 and failing over, with the key that made it."""
    for job_id in [j for j, status in tally.accepted.items() if status is None]:
        headers = {"Authorization": tally.owners[job_id]} if tally.owners.get(job_id) else {}
        https = [httpx.AsyncClient(base_url=b, timeout=HTTP_TIMEOUT_S, headers=headers) for b in stack.bases]
        try:
            client = ChaosClient(https, 0, windows, stack.hook, rng=random.Random(0), tally=tally, seeds=None,
                                 steps=1, stop_at=0.0, drain_until=until, max_requests=sys.maxsize)  # fmt: skip
            await client.follow({"id": job_id, "status": "unknown"})
        finally:
            for http in https:
                await http.aclose()


def records(redis_url: str) -> dict[str, dict[str, str]]:
    """Every job record Redis holds now, by id."""
    import redis

    from app.core import keys

    conn = redis.Redis.from_url(redis_url)
    out = {}
    try:
        for key in conn.scan_iter(match=keys.job("*"), count=1000, _type="hash"):  # not the idempotency keys
            record = {k.decode(): v.decode() for k, v in conn.hgetall(key).items()}
            if record.get("id"):
                out[record["id"]] = record
    finally:
        conn.close()
    return out


def where(redis_url: str, job_id: str) -> dict:
    """Where a lost job is: its status, its run's record, and its run's RQ job (status, and which of the queue, the
    intermediate queue that a worker moves it to as it takes it, and the started registry hold it)."""
    import redis
    from rq import Queue
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from app.core import keys

    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        record = conn.hgetall(keys.job(job_id))
        run_id = record.get("run") or job_id
        run = conn.hgetall(keys.run(run_id))
        out = {
            "status": record.get("status"),
            "run": run_id,
            "run_record": run,
            "running": conn.sismember(keys.RUNNING, run_id),
        }
        rq_id = run.get("rq_job") or run_id
        if conn.exists(Job.key_for(rq_id)):
            job = Job.fetch(rq_id, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
            queue = Queue(job.origin, connection=job.connection)
            out["rq"] = {
                "status": str(job.get_status(refresh=False)),
                "in_queue": rq_id in conn.lrange(queue.key, 0, -1),
                "in_intermediate": rq_id in conn.lrange(queue.intermediate_queue_key, 0, -1),
                "in_started": rq_id in queue.started_job_registry,
            }
        return out
    finally:
        conn.close()


def completions(worker_logs: str) -> Counter[str]:
    """Run id -> how many times a worker ran it to its end (worker.batch.log_line: the line of a run's end, whatever
    its outcome, a second run's is `canceled` since its jobs had ended; not a run skipped before it started). A run
    whose worker was killed logged nothing."""
    done: Counter[str] = Counter()
    for line in worker_logs.splitlines():
        start = line.find('{"')
        if start < 0 or '"event": "job"' not in line:
            continue
        with contextlib.suppress(ValueError):
            fields = json.loads(line[start:])
            if not fields.get("skipped"):
                done[fields["id"]] += 1
    return done


def fetch_images(base: str, tally: ChaosTally, jobs: list[str]) -> dict[str, int | str]:
    """GET image.png of each job through API 1: job id -> sha256 of the bytes, or the status when not 200."""
    out: dict[str, int | str] = {}
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT_S) as http:
        for job_id in jobs:
            headers = {"Authorization": tally.owners[job_id]} if tally.owners.get(job_id) else {}
            r = http.get(f"/jobs/{job_id}/image.png", headers=headers)
            out[job_id] = hashlib.sha256(r.content).hexdigest() if r.status_code == 200 else r.status_code
    return out


def references(store: Path, model: str, steps: int, seeds: dict[str, int]) -> dict[str, str]:
    """Job id -> sha256 of the PNG this process makes for the job's engine key (its seed, `steps`, eta 0), as the
    worker writes it (the pixels and the `parameters` chunk)."""
    from app.core.png import encode_png
    from app.core.spec import GenerateSpec
    from model_store import Store
    from worker.engine import load_engine

    engine = load_engine(model, Store(store), device="cpu")
    m = engine.manifest
    out, items = {}, sorted(seeds.items())
    for i in range(0, len(items), 16):  # batched: a row's bytes do not depend on its batch (DETERMINISM.md)
        chunk = items[i : i + 16]
        images = engine.generate([seed for _, seed in chunk], steps, [0.0] * len(chunk))
        for (job_id, seed), image in zip(chunk, images, strict=True):
            spec = GenerateSpec("0" * 32, m.ref, m.identity, seed=seed, steps=steps, eta=0.0)
            out[job_id] = hashlib.sha256(encode_png(image, engine.parameters(spec))).hexdigest()
    return out


def latency_rows(tally: ChaosTally, windows: list[Window]) -> list[dict]:
    """p50/p99 per request kind before, during and after each kind of fault (all its instances together)."""
    groups = {"submit": ("generate_",), "poll": ("wait",), "image": ("image",), "sse": ("sse",)}
    rows = []
    for action in sorted({w.action for w in windows}):
        spans = [w for w in windows if w.action == action and w.back is not None]
        phases = {
            "before": [(w.start - PHASE_S, w.start) for w in spans],
            "during": [(w.start, w.end) for w in spans],
            "after": [(w.end, w.end + PHASE_S) for w in spans],
        }
        for phase, ranges in phases.items():
            row = {"fault": action, "phase": phase, "n": 0}
            for group, prefixes in groups.items():
                xs = [s for t, k, code, s in tally.timeline
                      if k.startswith(prefixes) and any(a <= t < b for a, b in ranges)]  # fmt: skip
                row["n"] += len(xs)
                row[group] = (1000 * percentile(xs, 50), 1000 * percentile(xs, 99)) if xs else None
            rows.append(row)
    return rows


def check(stack: ChaosStack, cfg: Config, observed: dict, store: Path, model: str, receiver: Receiver) -> dict:
    """Everything a chaos run promises, from what the clients saw, what Redis holds and the workers' logs."""
    tally: ChaosTally = observed["tally"]
    windows: list[Window] = observed["windows"]
    held = records(stack.redis_url)
    accepted = set(tally.accepted)
    lost = {j for j, s in tally.accepted.items() if s is None}
    orphans = sorted(set(held) - accepted)  # jobs no request was answered with: a resend that made a second job
    not_final = sorted(j for j in accepted if held.get(j, {}).get("status") not in FINAL)
    final_states = Counter(held[j]["status"] for j in accepted if j in held)
    succeeded = sorted(j for j in accepted if held.get(j, {}).get("status") == "succeeded")
    errors = Counter(held[j].get("error", "")[:120] for j in accepted if held.get(j, {}).get("status") == "failed")
    retries = Counter(int(held[j].get("retries") or 0) for j in accepted if j in held)
    rerun = sorted(j for j in succeeded if int(held[j].get("retries") or 0) > 0)
    twice = {run: n for run, n in completions(stack.logs("worker")).items() if n > 1}
    served = fetch_images(stack.bases[0], tally, succeeded)
    missing = sorted(j for j, v in served.items() if not isinstance(v, str))
    fresh = [j for j in succeeded if j in tally.seeds and held[j].get("kind", "generate") == "generate"]
    rng = random.Random(cfg.seed)
    checked = sorted(set(rng.sample(fresh, min(cfg.sample, len(fresh)))) | {j for j in rerun if j in tally.seeds})
    want = references(store, model, cfg.steps, {j: tally.seeds[j] for j in checked}) if checked else {}
    mismatched = sorted(j for j in checked if served.get(j) != want[j])
    ended = [j for j in accepted if held.get(j, {}).get("status") in FINAL]
    hooks = receiver.completed()
    no_hook = sorted(j for j in ended if not hooks.get(j))
    two_ids = sorted(j for j in ended if len(hooks.get(j, ())) > 1)
    undocumented = {str(s): n for s, n in tally.statuses.items() if s not in DOCUMENTED}
    warm = RSS_WARMUP * 60 * cfg.minutes
    api, worker = (rss_growth(observed[k].summary(tally), warm) for k in ("api_rss", "worker_rss"))
    kinds = {
        kind: {"n": len(xs), "p50_ms": 1000 * percentile(xs, 50), "p99_ms": 1000 * percentile(xs, 99)}
        for kind, xs in tally.latencies.items()
    }
    rss_ok = all(r["growth_pct"] is not None and r["growth_pct"] < RSS_LIMIT_PCT for r in (api, worker))
    failures = {
        "lost": len(lost | set(not_final)),
        "second jobs for one request": len(set(orphans) | set(tally.second_jobs)),
        "runs completed twice": len(twice),
        "succeeded without an image": len(missing),
        "byte mismatches": len(mismatched),
        "undocumented statuses": sum(undocumented.values()),
        "unexpected answers": len(tally.unexpected),
        "bad input accepted": tally.bad_accepted,
        "missing webhook deliveries": len(no_hook),
        "deliveries under two webhook-ids": len(two_ids),
        "RSS growth over 10%": 0 if rss_ok else 1,
        "faults not inflicted": sum(w.back is None for w in windows),
    }
    return {
        "config": vars(cfg),
        "wall_s": observed["wall_s"],
        "requests": tally.requests,
        "actions": dict(tally.actions),
        "statuses": {str(s): n for s, n in sorted(tally.statuses.items())},
        "kinds": kinds,
        "transport_errors": dict(tally.transport_errors),
        "failovers": tally.failovers,
        "resent_posts": tally.resent_posts,
        "lost_answers": tally.lost_answers,
        "in_window_503": dict(tally.in_window_503),
        "windows": [vars(w) | {"end": w.end} for w in windows],
        "latency": latency_rows(tally, windows),
        "jobs": {
            "accepted": len(accepted),
            "held": len(held),
            "final_states": dict(final_states),
            "succeeded": len(succeeded),
            "rerun_after_a_kill": len(rerun),
        },
        "retries": {str(k): v for k, v in sorted(retries.items())},
        "failed_errors": dict(errors),
        "bytes": {
            "checked": len(checked),
            "rerun_checked": len([j for j in checked if j in rerun]),
            "mismatched": mismatched[:20],
        },
        "webhooks": {
            "ended_jobs": len(ended),
            "arrivals": len(receiver.got),
            "missing": no_hook[:20],
            "two_ids": two_ids[:20],
        },
        "lost": sorted(lost | set(not_final))[:20],
        "orphans": orphans[:20],
        "completed_twice": dict(list(twice.items())[:20]),
        "missing_images": {j: served[j] for j in missing[:20]},
        "undocumented": undocumented,
        "unexpected": tally.unexpected[:50],
        "refusals": dict(tally.refusals),
        "api1_rss": api,
        "worker0_rss": worker,
        "failures": failures,
        "ok": not any(failures.values()),
    }


def rss_growth(summary: dict, warm_s: float) -> dict:
    """bench.load's RSS summary, its growth counted from the first sample at or after `warm_s` of load instead, with
    the RSS at each quarter of the run (MiB) to show the trend."""
    samples = summary["samples"]
    base = next((kib for t, kib in samples if t >= warm_s), summary["start_kib"])
    end = summary["end_kib"]
    quarters = [samples[round(q * (len(samples) - 1) / 4)][1] for q in range(5)] if samples else []
    return {
        **{k: v for k, v in summary.items() if k != "samples"},
        "warm_s": warm_s,
        "warm_kib": base,
        "growth_pct": 100.0 * (end - base) / base if base and end else None,
        "growth_from_start_pct": summary["growth_pct"],
        "quarters_mib": [round(kib / 1024, 1) for kib in quarters],
    }


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def format_report(s: dict) -> str:
    def pct(pair) -> str:
        return "-" if pair is None else f"{fmt(pair[0])} / {fmt(pair[1])}"

    faults = [[f"{w['start']:.1f}", f"{w['back']:.1f}" if w["back"] is not None else "never", w["action"],
               w["target"], len(w["runs"])] for w in s["windows"]]  # fmt: skip
    lat = [[r["fault"], r["phase"], r["n"], pct(r["submit"]), pct(r["poll"]), pct(r["image"]), pct(r["sse"])]
           for r in s["latency"]]  # fmt: skip
    kinds = [[k, v["n"], fmt(v["p50_ms"]), fmt(v["p99_ms"])] for k, v in sorted(s["kinds"].items())]
    checks = [[name, n, "ok" if not n else "FAILED"] for name, n in s["failures"].items()]
    jobs, api, worker = s["jobs"], s["api1_rss"], s["worker0_rss"]

    def growth(r: dict) -> str:
        g = "?" if r["growth_pct"] is None else f"{r['growth_pct']:+.1f}%"
        return (
            f"{mib(r['warm_kib'])} at {r['warm_s']:.0f} s -> {mib(r['end_kib'])} ({g}; "
            f"{mib(r['start_kib'])} after {r['start_after_jobs']} jobs; by quarters {r['quarters_mib']} MiB)"
        )

    lines = [
        table("Faults inflicted (load seconds)", ["at", "back", "fault", "target", "runs held"], faults),
        table(
            "Requests",
            ["kind", "n", "p50 ms", "p99 ms"],
            kinds,
            ["`wait` is a long poll: its latency includes the wait for the job"],
        ),
        table(
            "Latency around faults, p50 / p99 ms",
            ["fault", "phase", "n", "submit", "poll", "image", "sse"],
            lat,
            [
                f"before: {PHASE_S:g} s before each; during: until the process is back + {SETTLE_S:g} s; after: "
                f"{PHASE_S:g} s after that"
            ],
        ),
        f"statuses: {s['statuses']}",
        f"jobs: accepted {jobs['accepted']} (Redis holds {jobs['held']}), final states {jobs['final_states']}, "
        f"re-run after a kill and succeeded: {jobs['rerun_after_a_kill']}",
        f"re-runs per job (count of jobs): {s['retries']}",
        f"errors of failed jobs: {s['failed_errors'] or 'none'}",
        f"bytes checked against an in-process reference: {s['bytes']['checked']} "
        f"({s['bytes']['rerun_checked']} of them re-run after a kill)",
        f"webhooks: {s['webhooks']['arrivals']} arrivals for {s['webhooks']['ended_jobs']} ended jobs",
        f"202s acted on as lost and sent again to the other API (same Idempotency-Key): {s['lost_answers']}",
        f"failovers: {s['failovers']}; POSTs sent again after a failover or a 503: {s['resent_posts']}; "
        f"503 in fault windows (documented, retried): {s['in_window_503'] or 'none'}",
        f"transport errors: {s['transport_errors'] or 'none'}; 429s: {s['refusals'] or 'none'}",
        f"RSS of API 1 (never killed): {growth(api)}",
        f"RSS of worker 0 (never killed): {growth(worker)}",
        table("Checks", ["check", "count", ""], checks),
    ]
    for name in ("lost_detail", "orphans", "completed_twice", "missing_images", "unexpected"):
        if s[name]:
            lines.append(f"{name}: {s[name]}")
    if s["bytes"]["mismatched"] or s["webhooks"]["missing"]:
        lines.append(f"mismatched: {s['bytes']['mismatched']}; webhooks missing: {s['webhooks']['missing']}")
    lines.append("OK" if s["ok"] else "FAILED")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load --chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--chaos", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--minutes", type=float, default=10.0, help="how long the clients send requests (default 10)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--workers", type=int, default=3, help="workers; worker 0 is never killed (default 3)")
    p.add_argument("--kill-every", type=float, default=20.0, help="seconds between worker kills (default 20)")
    p.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: a random one, printed)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps per job (default 20)")
    p.add_argument("--results", choices=("s3", "file", "redis"), default="s3", help="result store (default s3)")
    p.add_argument("--drain", type=float, default=DRAIN_S, help=f"seconds for jobs to end afterwards ({DRAIN_S:g})")
    p.add_argument("--sample", type=int, default=SAMPLE_JOBS, help=f"jobs whose bytes are checked ({SAMPLE_JOBS})")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the summary as JSON")
    return p


def run(cfg: Config, command: str, api_command: Sequence[str] | None = None, store: Path | None = None) -> dict:
    """A chaos run of `cfg` on a small random model (or `store`'s LOAD_MODEL); its summary."""
    from app.auth import owner_id
    from app.core.signing import new_secret
    from bench.models import model_source
    from diffusion.unet import UNetConfig

    info = {"command": command, "machine": machine()}
    info["machine"]["torch_threads"] = cfg.threads  # each worker's
    print(f"command: {command}\n{format_machine(info['machine'])}", flush=True)
    faults = schedule(cfg.seed, 60 * cfg.minutes, cfg.kill_every, cfg.results == "s3")
    print(table(f"Fault schedule (seed {cfg.seed})", ["at s", "fault"], [[f.at, f.action] for f in faults]), flush=True)
    small = UNetConfig(16, widths=(8, 16), block_depth=1)
    api_keys = [secrets.token_hex(16) for _ in range(max(1, -(-cfg.clients // 4)))]
    receiver = Receiver().start()
    with tempfile.TemporaryDirectory(prefix="diffusetv-chaos-secrets-") as tmp:
        secrets_file = Path(tmp) / "webhook-secrets.json"
        secrets_file.write_text(json.dumps({owner_id(key): new_secret() for key in api_keys}))
        env = {
            "DIFFUSETV_API_KEYS": ",".join(api_keys),
            "DIFFUSETV_MAX_QUEUE": "1000",
            "DIFFUSETV_CLIENT_JOBS": "1000000",
            "DIFFUSETV_CLIENT_BYTES": str(2**40),
            "DIFFUSETV_CLIENT_COMPUTE": "100000000",
            "DIFFUSETV_CLIENT_STREAMS": "64",
            "DIFFUSETV_WEBHOOK_SECRETS_FILE": str(secrets_file),
            "DIFFUSETV_WEBHOOK_ALLOW_NETS": "127.0.0.1/32",
            "DIFFUSETV_WEBHOOK_BASE_DELAY_S": "0.5",
            "DIFFUSETV_WEBHOOK_MAX_DELAY_S": "5",
            "DIFFUSETV_WEBHOOK_TIMEOUT_S": "3",
            "DIFFUSETV_WEBHOOK_LEASE_MARGIN_S": "2",
            "DIFFUSETV_WEBHOOK_ATTEMPTS": "20",
            "DIFFUSETV_RESULTS_RETRY_S": "30",
        }
        try:
            with (
                model_source(store, LOAD_MODEL if store else None, small, LOAD_MODEL) as (root, model),
                ChaosStack(root, model, cfg.workers, cfg.threads, cfg.results, env, api_command) as stack,
            ):
                stack.hook = receiver.url
                print(f"stack: APIs {stack.bases}, {cfg.workers} workers, results {cfg.results}", flush=True)
                observed = asyncio.run(load(stack, cfg, api_keys, faults))
                wait_for_webhooks(receiver, observed["tally"], cfg.webhook_drain)
                summary = check(stack, cfg, observed, root, resolved_ref(root, model), receiver)
                stack.keep = not summary["ok"]
                summary["lost_detail"] = {job: where(stack.redis_url, job) for job in summary["lost"]}
        finally:
            receiver.close()
    return {**info, **summary, "schedule": [vars(f) for f in faults]}


def wait_for_webhooks(receiver: Receiver, tally: ChaosTally, seconds: float) -> None:
    """Until every job the clients saw end has its `completed` delivery, or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hooks = receiver.completed()
        if all(hooks.get(j) for j, status in tally.accepted.items() if status is not None):
            return
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--chaos"]
    args = parser().parse_args(argv)
    if args.workers < 2 or args.clients < 1 or args.minutes <= 0 or args.kill_every <= 0:
        print("bench.load --chaos: error: --workers >= 2, --clients >= 1, --minutes and --kill-every > 0",
              file=sys.stderr)  # fmt: skip
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    cfg = Config(args.minutes, args.clients, args.workers, args.kill_every, seed, args.steps, args.results,
                 drain=args.drain, sample=args.sample)  # fmt: skip
    flags = [f"--seed={seed}"] if args.seed is None else []
    command = shlex.join([sys.executable, "-m", "bench.load", "--chaos", *argv, *flags])
    summary = run(cfg, command)
    print("\n" + format_report(summary), flush=True)
    if args.json:
        write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0 if summary["ok"] else 1
