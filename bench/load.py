"""A bounded load and soak test of the service: N async clients, M minutes of mixed traffic, loopback only.

    python -m bench.load --clients N --minutes M [--keys K] [--max-queue Q] [--store DIR --model REF]
                         [--steps S] [--threads T] [--json FILE]
    python -m bench.load --chaos ...     # the same load while processes are killed: bench.chaos

Starts redis-server, `diffusetv worker` and `diffusetv api` on 127.0.0.1 (bench.stack), serving a small
random-weights U-Net from a temporary store unless --store is given, with K API keys (default: one per 4
clients, so that the per-key quotas and stream caps do not dominate) and MAX_QUEUE Q. Each client uses one
key and loops until the time or the request budget is spent, choosing one of:
- fresh (the largest share): POST /generate with a seed never used before (no cache can answer it), follow
  the job to its end with long polls, fetch the PNG;
- sse: the same, but follow the job through its Server-Sent Events until the final status;
- join: a request identical to one another client has in flight (it joins that run, or hits the cache);
- repeat: an earlier succeeded request again (a cache hit, `succeeded` at once), then its PNG with
  If-None-Match (304);
- cancel: POST a fresh request, DELETE it soon after (202, or 409 when it had already ended);
- bad: input the API must refuse with a 4xx (steps=0, seed="x", NaN, an unknown field, malformed JSON, an
  unknown or malformed job id, `wait` out of range, a body over 64 KiB where that is the limit, a wrong key).
Each accepted job is followed with `GET /jobs/{id}?wait=30` until it ends. Once the time is up, jobs that
have not ended get DRAIN_S more. 429s (a bound reached) are counted on their own and retried after
Retry-After, never counted as lost. The length of the model's queue is sampled every QUEUE_SAMPLE_S.
Exit status 1 when a job was lost (accepted but never ended), a status outside the documented set
appeared, bad input was accepted, a 503 came while Redis was up, or the queue was seen over MAX_QUEUE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shlex
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.report import fmt, format_machine, machine, percentile, table, write_json
from bench.service import Seeds

DOCUMENTED = frozenset({200, 202, 304, 401, 404, 409, 413, 422, 429, 503})
FINAL = frozenset({"succeeded", "failed", "canceled"})
MIX = {"fresh": 0.4, "sse": 0.1, "join": 0.1, "repeat": 0.15, "cancel": 0.1, "bad": 0.15}
CLIENTS_PER_KEY = 4
DEFAULT_MAX_QUEUE = 50  # small enough that 200 clients reach it: the bound is under test
QUEUE_SAMPLE_S = 0.25
WAIT_S = 30.0  # the API's longest long-poll
DRAIN_S = 120.0  # after the load, how long accepted jobs get to end
HTTP_TIMEOUT_S = WAIT_S + 30
CANCEL_DELAY_S = 0.05  # a cancel follows its POST after up to this long
MAX_BACKOFF_S = 5.0  # longest Retry-After honoured on 429/503
RETRY_PAUSE_S = 0.5  # pause after a transport error or an unexpected status while following a job
WARMUP_JOBS = 5  # the worker's starting RSS is read once this many jobs have ended
RSS_SAMPLE_S = 2.0
WARMUP_POLL_S = 0.05  # until the starting RSS is read
DEFAULT_MAX_REQUESTS = 100_000
LOAD_MODEL = "loadnet"
OVERSIZED_BODY = b'{"seed": 1, "pad": "' + b"x" * (65 * 1024) + b'"}'


@dataclass(frozen=True)
class BadInput:
    label: str
    method: str
    url: str
    expected: frozenset[int]
    json_body: object = None
    content: bytes | None = None


def bad_inputs() -> list[BadInput]:
    """Requests that must be refused: body validation (422), unknown or malformed ids (404), size (413)."""
    unknown = uuid.uuid4().hex
    refused = frozenset({422})
    return [
        BadInput("eta NaN", "POST", "/generate", refused, content=b'{"seed": 1, "eta": NaN}'),
        BadInput("unknown field Infinity", "POST", "/generate", refused, content=b'{"seed": 1, "x": Infinity}'),
        BadInput("steps=0", "POST", "/generate", refused, json_body={"seed": 1, "steps": 0}),
        BadInput("steps=1001", "POST", "/generate", refused, json_body={"seed": 1, "steps": 1001}),
        BadInput("seed as a string", "POST", "/generate", refused, json_body={"seed": "x"}),
        BadInput("seed as a numeric string", "POST", "/generate", refused, json_body={"seed": "7"}),
        BadInput("unknown field", "POST", "/generate", refused, json_body={"seed": 1, "colour": "red"}),
        BadInput("unknown model", "POST", "/generate", refused, json_body={"seed": 1, "model": "no-such-model"}),
        BadInput("malformed JSON", "POST", "/generate", refused, content=b'{"seed": 1,'),
        BadInput("no body", "POST", "/generate", refused, content=b""),
        # /generate takes pictures, so its bodies may reach IMAGE_BODY_BYTES (8 MiB); OpenAI's route keeps 64 KiB
        BadInput("body over 64 KiB", "POST", "/v1/images/generations", frozenset({413}), content=OVERSIZED_BODY),
        BadInput("unknown job id", "GET", f"/jobs/{unknown}", frozenset({404})),
        BadInput("malformed job id", "GET", "/jobs/not-a-job-id", frozenset({404})),
        BadInput("image of an unknown job", "GET", f"/jobs/{unknown}/image.png", frozenset({404})),
        BadInput("cancel an unknown job", "DELETE", f"/jobs/{unknown}", frozenset({404})),
        BadInput("wait out of range", "GET", f"/jobs/{unknown}?wait=31", refused),
        BadInput("wrong key", "POST", "/generate", frozenset({401}), json_body={"seed": 1}),
    ]


@dataclass
class Tally:
    """Everything the clients observed; asyncio runs them on one thread, so no locks."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[int] = field(default_factory=Counter)
    by_kind: Counter[tuple[str, int]] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, str | None] = field(default_factory=dict)  # job id -> final status, None until it ends
    succeeded: list[tuple[int, str]] = field(default_factory=list)  # (seed, ETag) of fresh requests that succeeded
    unexpected: list[str] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)
    in_flight: dict[int, int] = field(default_factory=dict)  # seed of a fresh request -> its clients following it
    cache_hits: int = 0
    bad_accepted: int = 0
    requests: int = 0
    queue_samples: list[int] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)  # 429s by the bound their message names
    owners: dict[str, str] = field(default_factory=dict)  # job id -> the Authorization header that made it

    def record(self, kind: str, status: int, seconds: float) -> None:
        self.latencies[kind].append(seconds)
        self.statuses[status] += 1
        self.by_kind[kind, status] += 1

    def accept(self, job: dict, auth: str = "") -> None:
        self.accepted.setdefault(job["id"], None)
        self.owners[job["id"]] = auth
        self.settle(job)

    def settle(self, job: dict) -> None:
        if job.get("status") in FINAL:
            self.accepted[job["id"]] = job["status"]

    def ended(self) -> int:
        return sum(status is not None for status in self.accepted.values())

    def expect(self, what: str, status: int, allowed: Sequence[int]) -> None:
        if status not in allowed:
            self.unexpected.append(f"{what}: {status} (expected {'/'.join(map(str, allowed))})")


REFUSALS = {"queue is full": "queue", "wait for this same image": "followers", "quota": "quota",
            "streams and long polls": "streams", "capacity": "capacity"}  # fmt: skip


def refusal(r: httpx.Response) -> str:
    """Which bound a 429 names."""
    detail = str(r.json().get("detail", "")) if r.headers.get("content-type", "").startswith("application/json") else ""
    return next((name for text, name in REFUSALS.items() if text in detail), "other")


@dataclass
class Client:
    """One simulated user: its HTTP client, its random choices, the shared tally and the clock."""

    http: httpx.AsyncClient
    rng: random.Random
    tally: Tally
    seeds: Seeds
    steps: int
    stop_at: float  # no new action after this
    drain_until: float  # no following after this
    max_requests: int
    wrong_key: dict[str, str] = field(default_factory=lambda: {"Authorization": "Bearer " + "w" * 32})

    async def call(self, kind: str, method: str, url: str, **kw) -> httpx.Response | None:
        """One request, timed and tallied; None on a transport error (also tallied)."""
        self.tally.requests += 1
        started = time.perf_counter()
        try:
            r = await self.http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            self.tally.transport_errors[f"{kind}: {type(exc).__name__}"] += 1
            return None
        self.tally.record(kind, r.status_code, time.perf_counter() - started)
        return r

    async def submit(self, kind: str, body: dict) -> dict | None:
        """POST /generate; the job when accepted (202), else None after honouring Retry-After on 429/503."""
        r = await self.call(kind, "POST", "/generate", json=body)
        if r is None:
            return None
        if r.status_code == 202:
            job = r.json()
            self.tally.accept(job, self.http.headers.get("authorization", ""))
            return job
        self.tally.expect(f"POST /generate ({kind})", r.status_code, (202, 429, 503))
        if r.status_code == 429:
            self.tally.refusals[refusal(r)] += 1
        if r.status_code in (429, 503):
            await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), MAX_BACKOFF_S))
        return None

    async def follow(self, job: dict) -> dict:
        """Long-poll the job until it ends or the drain deadline passes."""
        while job["status"] not in FINAL and time.monotonic() < self.drain_until:
            wait = max(0.1, min(WAIT_S, self.drain_until - time.monotonic()))
            r = await self.call("wait", "GET", f"/jobs/{job['id']}", params={"wait": round(wait, 1)})
            if r is not None and r.status_code == 200:
                job = r.json()
                self.tally.settle(job)
                continue
            if r is not None and r.status_code == 429:  # this key's long polls and streams are at their cap
                self.tally.refusals[refusal(r)] += 1
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), MAX_BACKOFF_S))
                continue
            if r is not None:
                self.tally.expect(f"GET /jobs/{{id}} of an accepted job ({job['status']})", r.status_code, (200,))
            await asyncio.sleep(RETRY_PAUSE_S)
        return job

    async def sse(self, job: dict) -> dict:
        """Follow the job through its event stream until the final status, which must close the stream."""
        started, final = time.perf_counter(), None
        self.tally.requests += 1
        try:
            async with self.http.stream("GET", f"/jobs/{job['id']}/events") as r:
                if r.status_code != 200:
                    self.tally.record("sse", r.status_code, time.perf_counter() - started)
                    if r.status_code == 429:
                        await r.aread()
                        self.tally.refusals[refusal(r)] += 1
                    self.tally.expect("GET events of an accepted job", r.status_code, (200, 429))
                    return await self.follow(job)
                async for line in r.aiter_lines():
                    if line.startswith("data:") and '"status"' in line:
                        status = json.loads(line[5:]).get("status")
                        final = status if status in FINAL else final
        except httpx.HTTPError as exc:
            self.tally.transport_errors[f"sse: {type(exc).__name__}"] += 1
            return await self.follow(job)
        self.tally.record("sse", 200, time.perf_counter() - started)
        if final is None:
            self.tally.unexpected.append(f"an event stream of job {job['id']} closed before its final status")
        return await self.follow(job)  # the record's final state (at once: the job has ended)

    async def fresh(self, via_sse: bool = False) -> None:
        seed = self.seeds()
        job = await self.submit("generate_fresh", {"seed": seed, "steps": self.steps})
        if job is None:
            return
        self.tally.in_flight[seed] = self.tally.in_flight.get(seed, 0) + 1
        try:
            job = await (self.sse(job) if via_sse else self.follow(job))
        finally:
            self.tally.in_flight[seed] -= 1
            if not self.tally.in_flight[seed]:
                del self.tally.in_flight[seed]
        if job["status"] != "succeeded":
            return
        r = await self.call("image", "GET", job["image_url"])
        if r is not None:
            self.tally.expect("GET image.png of a succeeded job", r.status_code, (200,))
            if r.status_code == 200:
                self.tally.succeeded.append((seed, r.headers.get("etag", "")))

    async def repeat(self) -> None:
        if not self.tally.succeeded:
            await self.fresh()
            return
        seed, etag = self.rng.choice(self.tally.succeeded)
        job = await self.submit("generate_repeat", {"seed": seed, "steps": self.steps})
        if job is None:
            return
        self.tally.cache_hits += job["status"] == "succeeded"
        job = await self.follow(job)
        if job["status"] == "succeeded":
            r = await self.call("image_304", "GET", job["image_url"], headers={"If-None-Match": etag})
            if r is not None:
                self.tally.expect("GET image.png with the ETag of the same request", r.status_code, (304,))

    async def join(self) -> None:
        if not self.tally.in_flight:
            await self.fresh()
            return
        seed = self.rng.choice(list(self.tally.in_flight))
        job = await self.submit("generate_join", {"seed": seed, "steps": self.steps})
        if job is not None:
            await self.follow(job)

    async def cancel(self) -> None:
        job = await self.submit("generate_cancel", {"seed": self.seeds(), "steps": self.steps})
        if job is None:
            return
        await asyncio.sleep(self.rng.uniform(0, CANCEL_DELAY_S))
        r = await self.call("delete", "DELETE", f"/jobs/{job['id']}")
        if r is not None:
            self.tally.expect("DELETE of an accepted job", r.status_code, (202, 409))
            if r.status_code == 202:
                self.tally.settle(r.json())
        await self.follow(job)

    async def bad(self) -> None:
        case = self.rng.choice(bad_inputs())
        kw: dict = {"json": case.json_body} if case.json_body is not None else {}
        if case.content is not None:
            kw = {"content": case.content, "headers": {"Content-Type": "application/json"}}
        if case.label == "wrong key":
            kw["headers"] = self.wrong_key
        r = await self.call("bad_input", case.method, case.url, **kw)
        if r is None:
            return
        self.tally.expect(f"bad input: {case.label}", r.status_code, sorted(case.expected))
        if 200 <= r.status_code < 300 and case.method == "POST":
            self.tally.bad_accepted += 1
            # accepted by mistake: still followed, so that LOST stays honest
            self.tally.accept(r.json(), self.http.headers.get("authorization", ""))
            await self.follow(r.json())

    async def run(self) -> None:
        actions = {
            "fresh": self.fresh,
            "sse": lambda: self.fresh(via_sse=True),
            "join": self.join,
            "repeat": self.repeat,
            "cancel": self.cancel,
            "bad": self.bad,
        }
        names, weights = list(MIX), list(MIX.values())
        while time.monotonic() < self.stop_at and self.tally.requests < self.max_requests:
            name = self.rng.choices(names, weights)[0]
            self.tally.actions[name] += 1
            await actions[name]()


def rss_kib(pid: int) -> int | None:
    """VmRSS of a live process in KiB, from /proc (Linux); None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


@dataclass
class RssWatch:
    """The worker's RSS: after WARMUP_JOBS jobs have ended (start), every RSS_SAMPLE_S, and at the end."""

    pid: int
    start: int | None = None
    start_after_jobs: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    async def watch(self, tally: Tally, began: float) -> None:
        while True:
            rss = rss_kib(self.pid)
            if rss is not None:
                self.samples.append((round(time.monotonic() - began, 1), rss))
                if self.start is None and tally.ended() >= WARMUP_JOBS:
                    self.start, self.start_after_jobs = rss, tally.ended()
            await asyncio.sleep(RSS_SAMPLE_S if self.start is not None else WARMUP_POLL_S)

    def summary(self, tally: Tally) -> dict:
        end = rss_kib(self.pid)
        start = self.start if self.start is not None else (self.samples[0][1] if self.samples else None)
        growth = 100.0 * (end - start) / start if start and end else None
        return {
            "pid": self.pid,
            "start_kib": start,
            "start_after_jobs": self.start_after_jobs if self.start is not None else 0,
            "end_kib": end,
            "end_after_jobs": tally.ended(),
            "growth_pct": growth,
            "samples": self.samples,
        }


def worker_pid(redis_url: str, fallback: int) -> int:
    """The pid in the worker's heartbeat (the process holding the model), else the process the stack started."""
    import redis

    from app.core import workers

    conn = redis.Redis.from_url(redis_url)
    try:
        for info in workers.live(conn):
            return int(info["pid"])
    finally:
        conn.close()
    return fallback


async def sample_queue(redis_url: str, queue_key: str, tally: Tally) -> None:
    """The model queue's length every QUEUE_SAMPLE_S, read from Redis itself on a connection of its own."""
    import redis.asyncio

    conn = redis.asyncio.Redis.from_url(redis_url)
    try:
        while True:
            tally.queue_samples.append(int(await conn.llen(queue_key)))
            await asyncio.sleep(QUEUE_SAMPLE_S)
    finally:
        await conn.aclose()


async def drain(base: str, tally: Tally, until: float) -> None:
    """Follow every accepted job that has not ended yet (its client gave up on a transport error), until `until`,
    with the key that made it."""
    for job_id in [j for j, status in tally.accepted.items() if status is None]:
        headers = {"Authorization": tally.owners[job_id]} if tally.owners.get(job_id) else {}
        async with httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT_S, headers=headers) as http:
            client = Client(http, random.Random(0), tally, Seeds(), 1, 0.0, until, sys.maxsize)
            await client.follow({"id": job_id, "status": "unknown"})


async def load(
    base: str, pid: int, args: argparse.Namespace, api_keys: list[str], redis_url: str, queue_key: str
) -> tuple[Tally, dict, float]:
    """Run the clients for the time given, drain, and read the worker's RSS; the tally, RSS summary and seconds."""
    tally, seeds, began = Tally(), Seeds(), time.monotonic()
    stop_at = began + 60 * args.minutes
    drain_until = stop_at + args.drain
    rss = RssWatch(pid)
    watcher = asyncio.create_task(rss.watch(tally, began))
    sampler = asyncio.create_task(sample_queue(redis_url, queue_key, tally))
    auth = [{"Authorization": f"Bearer {key}"} for key in api_keys]
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)  # one user: a few connections at most
    clients = [
        httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT_S, headers=auth[i % len(auth)], limits=limits)
        for i in range(args.clients)
    ]
    try:
        await asyncio.gather(
            *(
                Client(http, random.Random(i), tally, seeds, args.steps, stop_at, drain_until, args.max_requests).run()
                for i, http in enumerate(clients)
            )
        )
        await drain(base, tally, drain_until)
    finally:
        watcher.cancel()
        sampler.cancel()
        for http in clients:
            await http.aclose()
    return tally, rss.summary(tally), time.monotonic() - began


def summarize(tally: Tally, rss: dict, wall_s: float, info: dict) -> dict:
    undocumented = {s: n for s, n in tally.statuses.items() if s not in DOCUMENTED}
    max_queue = info["config"]["max_queue"]
    queue_max = max(tally.queue_samples, default=0)
    ended = Counter(status for status in tally.accepted.values() if status is not None)
    accepted, final = len(tally.accepted), tally.ended()
    kinds = {
        kind: {"n": len(xs), "p50_ms": 1000 * percentile(xs, 50), "p99_ms": 1000 * percentile(xs, 99)}
        for kind, xs in tally.latencies.items()
    }
    return {
        **info,
        "wall_s": wall_s,
        "requests": tally.requests,
        "actions": dict(tally.actions),
        "statuses": {str(s): n for s, n in sorted(tally.statuses.items())},
        "statuses_by_kind": {f"{k} {s}": n for (k, s), n in sorted(tally.by_kind.items())},
        "transport_errors": dict(tally.transport_errors),
        "kinds": kinds,
        "jobs": {"accepted": accepted, "final": final, "lost": accepted - final, "final_states": dict(ended)},
        "cache_hits": tally.cache_hits,
        "undocumented": {str(s): n for s, n in undocumented.items()},
        "unexpected": tally.unexpected[:200],
        "unexpected_count": len(tally.unexpected),
        "bad_input_accepted": tally.bad_accepted,
        "worker_rss": rss,
        "refused_429": tally.statuses.get(429, 0),
        "refusals": dict(tally.refusals),
        "unavailable_503": tally.statuses.get(503, 0),
        "queue": {"max_queue": max_queue, "samples": len(tally.queue_samples), "max_seen": queue_max},
        "ok": accepted == final
        and not undocumented
        and not tally.bad_accepted
        and not tally.statuses.get(503, 0)
        and queue_max <= max_queue,
    }


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def format_report(s: dict) -> str:
    jobs, rss = s["jobs"], s["worker_rss"]
    status_rows = [[code, n, "yes" if int(code) in DOCUMENTED else "NO"] for code, n in s["statuses"].items()]
    kind_rows = [[k, v["n"], fmt(v["p50_ms"]), fmt(v["p99_ms"])] for k, v in sorted(s["kinds"].items())]
    growth = "?" if rss["growth_pct"] is None else f"{rss['growth_pct']:+.1f}%"
    lines = [
        table(
            f"Requests: {s['requests']} in {s['wall_s']:.0f} s",
            ["kind", "n", "p50 ms", "p99 ms"],
            kind_rows,
            ["`wait` is a long-poll (GET /jobs/{id}?wait=...): its latency includes the wait for the job"],
        ),
        table("Statuses", ["status", "count", "documented"], status_rows),
        f"actions: {s['actions']}; cache hits on repeats: {s['cache_hits']}",
        f"transport errors: {s['transport_errors'] or 'none'}",
        f"jobs: accepted {jobs['accepted']}, final {jobs['final']}, LOST = {jobs['lost']}; "
        f"final states: {jobs['final_states']}",
        f"undocumented statuses: {s['undocumented'] or 'none'}",
        f"429 (a bound reached, retried after Retry-After, not lost): {s['refused_429']} {s['refusals']}; "
        f"503 with Redis up: {s['unavailable_503']}",
        f"queue length: max {s['queue']['max_seen']} in {s['queue']['samples']} samples "
        f"(MAX_QUEUE {s['queue']['max_queue']})",
        f"unexpected answers: {s['unexpected_count']}" + "".join(f"\n  {u}" for u in s["unexpected"][:20]),
        f"worker RSS (pid {rss['pid']}): start {mib(rss['start_kib'])} (after {rss['start_after_jobs']} jobs), "
        f"end {mib(rss['end_kib'])} (after {rss['end_after_jobs']} jobs), growth {growth}",
        "OK" if s["ok"] else "FAILED: lost jobs, undocumented statuses, accepted bad input, a 503 or MAX_QUEUE passed",
    ]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--minutes", type=float, default=1.0, help="how long the clients send requests (default 1)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps per job (default 20)")
    p.add_argument("--threads", type=int, default=None, help="the worker's torch threads (default: all cores)")
    p.add_argument("--keys", type=int, default=None, help=f"API keys (default: one per {CLIENTS_PER_KEY} clients)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help=f"MAX_QUEUE ({DEFAULT_MAX_QUEUE})")
    p.add_argument("--store", default=None, help="model store (default: a temporary one with a small random model)")
    p.add_argument("--model", default=None, help=f"model to serve (default: {LOAD_MODEL}, or emoji32 with --store)")
    p.add_argument("--drain", type=float, default=DRAIN_S, help=f"seconds for jobs to end afterwards ({DRAIN_S:g})")
    p.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS, help="request budget, all clients")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the summary as JSON")
    return p


def validate(args: argparse.Namespace) -> str | None:
    if args.clients < 1 or args.max_requests < 1:
        return "--clients and --max-requests must be >= 1"
    if not 0 < args.minutes <= 24 * 60:
        return f"--minutes must be in (0, 1440] (got {args.minutes})"
    if not 1 <= args.steps <= 1000:
        return f"--steps must be in 1..1000 (got {args.steps})"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1 (got {args.threads})"
    if (args.keys is not None and args.keys < 1) or args.max_queue < 1:
        return "--keys and --max-queue must be >= 1"
    return None


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    from rq import Queue

    from app.core import keys
    from bench.models import model_source
    from bench.stack import LocalStack
    from diffusion.unet import UNetConfig

    threads = args.threads or len(os.sched_getaffinity(0))
    info = {"command": shlex.join([sys.executable, "-m", "bench.load", *argv]), "machine": machine()}
    info["machine"]["torch_threads"] = threads
    print(f"command: {info['command']}\n{format_machine(info['machine'])}", flush=True)
    small = UNetConfig(16, widths=(8, 16), block_depth=1)  # the queue and the service are under test, not the model
    n_keys = args.keys or max(1, -(-args.clients // CLIENTS_PER_KEY))
    api_keys = [secrets.token_hex(16) for _ in range(n_keys)]
    env = {"DIFFUSETV_API_KEYS": ",".join(api_keys), "DIFFUSETV_MAX_QUEUE": str(args.max_queue)}
    with (
        model_source(args.store, args.model, small, LOAD_MODEL) as (store, model),
        LocalStack(store, model, threads, env=env) as stack,
    ):
        redis_url = stack.env["DIFFUSETV_REDIS_URL"]
        pid = worker_pid(redis_url, stack.procs[1].pid)
        config = {
            "clients": args.clients,
            "keys": n_keys,
            "max_queue": args.max_queue,
            "minutes": args.minutes,
            "steps": args.steps,
            "model": model,
        }
        print(f"stack: {stack.base}, worker pid {pid}; {config}", flush=True)
        queue_key = Queue.redis_queue_namespace_prefix + keys.queue_name(resolved_ref(store, model))
        tally, rss, wall_s = asyncio.run(load(stack.base, pid, args, api_keys, redis_url, queue_key))
    return summarize(tally, rss, wall_s, {**info, "config": {**config, "threads": threads}})


def resolved_ref(store: Path, model: str) -> str:
    from model_store import Store

    return Store(store).resolve(model).ref


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--chaos" in argv:  # the same load, with faults (bench.chaos)
        from bench import chaos

        return chaos.main(argv)
    args = parser().parse_args(argv)
    problem = validate(args)
    if problem:
        print(f"bench.load: error: {problem}", file=sys.stderr)
        return 2
    summary = run(args, argv)
    print("\n" + format_report(summary), flush=True)
    if args.json:
        write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
