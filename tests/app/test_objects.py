"""The registry of stored objects (app.core.objects) and the redis and file stores, on a real redis-server: reserve,
publish, keep, the sweep, and the interleavings of a sweep with a re-use of the same object."""

import hashlib
import os
import threading
import time

import pytest
import redis as redis_lib

from app.core import keys, objects
from app.core.results import StoreUnavailable
from app.core.results.file_store import FileStore
from app.core.results.redis_store import RedisStore

pytestmark = pytest.mark.each_redis

DATA = b"\x89PNG not really, but bytes"
NAME = objects.name(objects.PNG, hashlib.sha256(DATA).hexdigest())


@pytest.fixture
def conn(redis_server):
    return redis_lib.Redis.from_url(redis_server.url)


@pytest.fixture(params=["redis", "file"])
def store(request, conn, tmp_path):
    return RedisStore(conn) if request.param == "redis" else FileStore(tmp_path / "results")


def expire_now(conn, name):
    """As if every job that used it had expired: its score in the past."""
    conn.zadd(keys.OBJECTS, {name: 1})


def test_names_are_content_addresses():
    digest = "ab" * 32
    assert objects.name(objects.PNG, digest) == f"png/{digest}.png"
    assert objects.name(objects.LATENT, digest) == f"latent/{digest}.safetensors"
    assert objects.name(objects.INPUT, digest) == f"input/{digest}"
    for kind, bad in ((objects.PNG, "AB" * 32), (objects.PNG, "../x"), ("exe", digest)):
        with pytest.raises(ValueError):
            objects.name(kind, bad)


def test_put_publish_keep_and_sweep(conn, store):
    objects.put(conn, store, NAME, DATA, hold_s=60, window_s=1)
    assert objects.state(conn, NAME) == "pending" and store.get(NAME) == DATA
    assert objects.publish(conn, NAME, len(DATA), ttl=100)
    assert objects.state(conn, NAME) == "live" and objects.size(conn, NAME) == len(DATA)
    score = conn.zscore(keys.OBJECTS, NAME)
    objects.keep(conn, NAME, 10)  # never lowered
    assert conn.zscore(keys.OBJECTS, NAME) == score
    objects.keep(conn, NAME, 1000)
    assert conn.zscore(keys.OBJECTS, NAME) > score + 800
    assert objects.sweep(conn, store, 10) == 0  # still used
    expire_now(conn, NAME)
    assert objects.sweep(conn, store, 10) == 1
    assert store.get(NAME) is None and objects.state(conn, NAME) is None and conn.zscore(keys.OBJECTS, NAME) is None


def test_an_upload_that_was_never_published_is_swept(conn, store):
    """A worker killed between its upload and the script that publishes: the reservation came first, so the sweeper
    finds the object once the hold has passed."""
    objects.put(conn, store, NAME, DATA, hold_s=1, window_s=1)
    assert objects.sweep(conn, store, 10) == 0
    time.sleep(1.1)
    assert objects.sweep(conn, store, 10) == 1 and store.get(NAME) is None


def test_a_claimed_object_is_a_miss_and_a_new_upload_waits_for_the_delete(conn, store):
    objects.put(conn, store, NAME, DATA, hold_s=60, window_s=1)
    objects.publish(conn, NAME, len(DATA), ttl=60)
    expire_now(conn, NAME)
    token = objects.claim(conn, NAME)
    assert token and objects.state(conn, NAME) == "deleting"
    assert not objects.publish(conn, NAME, len(DATA), ttl=60)  # deliver treats it as a miss
    assert not objects.reserve(conn, NAME, 60)  # an upload must wait for the delete
    assert objects.claim(conn, NAME) is None  # one sweeper at a time

    uploaded = threading.Event()

    def upload():
        objects.put(conn, store, NAME, DATA, hold_s=60, window_s=10)
        uploaded.set()

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(0.3)
    assert not uploaded.is_set()  # waiting out the delete
    store.delete(NAME)
    assert objects.forget(conn, NAME, token)
    thread.join(10)
    assert uploaded.is_set() and store.get(NAME) == DATA and objects.state(conn, NAME) == "pending"
    assert objects.publish(conn, NAME, len(DATA), ttl=60)


def test_a_reuse_before_the_claim_keeps_the_object(conn, store):
    objects.put(conn, store, NAME, DATA, hold_s=60, window_s=1)
    objects.publish(conn, NAME, len(DATA), ttl=60)
    expire_now(conn, NAME)
    objects.keep(conn, NAME, 60)  # a cache hit extends it first
    assert objects.claim(conn, NAME) is None
    assert objects.sweep(conn, store, 10) == 0 and store.get(NAME) == DATA


def test_a_lapsed_claim_is_finished_by_the_next_sweep_never_taken_over_by_an_upload(conn, store):
    """A sweeper whose delete outlives its lease: its delete may still land, so an upload waits for the next pass,
    which claims the object again, deletes it and forgets it; the late sweeper's forget then does nothing."""
    objects.put(conn, store, NAME, DATA, hold_s=60, window_s=1)
    expire_now(conn, NAME)
    stale = objects.claim(conn, NAME, lease_s=0.2)
    time.sleep(0.3)
    assert objects.reserve(conn, NAME, 60) is None
    assert objects.sweep(conn, store, 10) == 1 and store.get(NAME) is None
    assert not objects.forget(conn, NAME, stale)
    assert objects.reserve(conn, NAME, 60)  # now a new upload may go


def test_a_reservation_that_a_sweep_took_is_not_published_for_its_old_writer(conn, store):
    """A writer whose hold ran out before it delivered: the sweep deleted its object and another writer reserved the
    name again, its upload not yet done. The first writer's reservation no longer publishes it (deliver: UNSTORED)."""
    first = objects.put(conn, store, NAME, DATA, hold_s=60, window_s=1)
    expire_now(conn, NAME)
    assert objects.sweep(conn, store, 10) == 1
    second = objects.reserve(conn, NAME, 60)  # pending, its bytes not uploaded yet
    assert second and second != first
    assert not objects.publish(conn, NAME, len(DATA), 60, first)
    assert objects.state(conn, NAME) == "pending"
    assert objects.publish(conn, NAME, len(DATA), 60, second)


def test_writers_of_the_same_bytes_share_one_reservation(conn, store):
    first = objects.put(conn, store, NAME, DATA, hold_s=60, window_s=1)
    assert objects.put(conn, store, NAME, DATA, hold_s=60, window_s=1) == first
    assert objects.publish(conn, NAME, len(DATA), 60, first)


def test_an_upload_that_a_sweep_overtook_is_done_again(conn, store):
    """The sweep takes the object while it uploads (the hold ran out): the re-reservation after the upload differs,
    so put uploads again, and the object is there when put returns."""

    class Swept:
        def __init__(self):
            self.puts = 0

        def put(self, name, data):
            store.put(name, data)
            self.puts += 1
            if self.puts == 1:  # a sweep lands after the first upload
                expire_now(conn, name)
                assert objects.sweep(conn, store, 10) == 1

    swept = Swept()
    gen = objects.put(conn, swept, NAME, DATA, hold_s=60, window_s=5)
    assert swept.puts == 2 and store.get(NAME) == DATA
    assert objects.publish(conn, NAME, len(DATA), 60, gen)


def test_put_gives_up_after_its_window_with_the_stores_error(conn):
    class Down:
        def put(self, name, data):
            raise StoreUnavailable("connection refused")

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="result store unavailable: connection refused"):
        objects.put(conn, Down(), NAME, DATA, hold_s=60, window_s=0.5)
    assert 0.5 <= time.monotonic() - started < 2


def test_the_sweep_is_bounded_and_stops_at_a_store_that_does_not_answer(conn, tmp_path):
    store = FileStore(tmp_path)
    names = [objects.name(objects.PNG, hashlib.sha256(bytes([i])).hexdigest()) for i in range(5)]
    for i, n in enumerate(names):
        objects.put(conn, store, n, bytes([i]), hold_s=60, window_s=1)
        expire_now(conn, n)
    assert objects.sweep(conn, store, 2) == 2
    assert len(objects.due(conn, 10)) == 3

    class Down(FileStore):
        def delete(self, name):
            raise StoreUnavailable("down")

    assert objects.sweep(conn, Down(tmp_path), 10) == 0
    states = sorted(objects.state(conn, n) for n in objects.due(conn, 10))
    assert states == ["deleting"] * 3  # each failed delete gave its claim back; MAX_FAILS in a row ended the pass
    assert objects.sweep(conn, store, 10) == 3  # the next pass takes them again at once
    assert objects.due(conn, 10) == []


def test_the_file_store_writes_whole_files_and_leaves_no_temporary(tmp_path):
    store = FileStore(tmp_path)
    store.put(NAME, DATA)
    assert (tmp_path / NAME).read_bytes() == DATA
    assert [p.name for p in (tmp_path / "png").iterdir()] == [NAME.split("/")[1]]
    with pytest.raises(ValueError):
        store.path("../etc/passwd")
    os.chmod(tmp_path / "png", 0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway
            with pytest.raises(StoreUnavailable):
                store.put(objects.name(objects.PNG, "cd" * 32), DATA)
            assert [p.name for p in (tmp_path / "png").iterdir()] == [NAME.split("/")[1]]
    finally:
        os.chmod(tmp_path / "png", 0o700)
