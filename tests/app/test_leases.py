"""A client's stream leases: a renewal says whether the lease was still held, extends only a held one, and a
lost lease taken again never passes the cap, however many holders race for it. Real Redis, in process."""

from __future__ import annotations

import threading
import time

import pytest
import redis as redis_lib

from app.core import keys, leases

pytestmark = pytest.mark.each_redis

CLIENT = "addr:192.0.2.1"


@pytest.fixture
def conn(redis_server):
    return redis_lib.Redis.from_url(redis_server.url)


def expiry(conn, lease: str) -> float | None:
    return conn.zscore(keys.leases(CLIENT), lease)


def test_renewing_a_held_lease_extends_it_and_says_held(conn):
    lease = leases.take(conn, CLIENT, 2, 5)
    before = expiry(conn, lease)
    assert leases.renew(conn, CLIENT, lease, 30) is True
    assert expiry(conn, lease) == pytest.approx(time.time() + 30, abs=2) and expiry(conn, lease) > before + 20
    assert 0 < conn.ttl(keys.leases(CLIENT)) <= leases.MAX_LEASE_S
    assert leases.renew(conn, CLIENT, lease, 10 * leases.MAX_LEASE_S) is True  # never longer than MAX_LEASE_S
    assert expiry(conn, lease) == pytest.approx(time.time() + leases.MAX_LEASE_S, abs=2)


def test_renewing_a_dropped_or_expired_lease_says_lost_and_changes_nothing(conn):
    dropped, expired = leases.take(conn, CLIENT, 2, 5), leases.take(conn, CLIENT, 2, 5)
    leases.release(conn, CLIENT, dropped)
    assert leases.renew(conn, CLIENT, dropped, 5) is False
    assert expiry(conn, dropped) is None  # not put back: ZADD XX would have done nothing either, but said nothing
    conn.zadd(keys.leases(CLIENT), {expired: time.time() - 1})  # past its expiry, not yet counted out by a take
    assert leases.renew(conn, CLIENT, expired, 5) is False
    assert expiry(conn, expired) < time.time()
    conn.delete(keys.leases(CLIENT))  # the whole set gone (expired, or Redis lost it)
    assert leases.renew(conn, CLIENT, expired, 5) is False
    assert not conn.exists(keys.leases(CLIENT))


def test_keep_takes_a_lost_lease_again_only_under_the_cap(conn):
    lease = leases.hold(conn, CLIENT, 1, 5)
    conn.delete(keys.leases(CLIENT))
    assert lease.keep() is True and expiry(conn, lease.id) > time.time()  # room: taken again, same id
    conn.delete(keys.leases(CLIENT))
    other = leases.hold(conn, CLIENT, 1, 5)  # another stream took the slot meanwhile
    assert lease.keep() is False  # at the cap: the holder ends
    assert conn.zrange(keys.leases(CLIENT), 0, -1) == [other.id.encode()]


def keep_together(held: list[leases.Lease]) -> list[bool]:
    """Every holder's `keep`, from as many threads released at once."""
    start, results = threading.Barrier(len(held)), [False] * len(held)

    def keep(i: int) -> None:
        start.wait()
        results[i] = held[i].keep()

    threads = [threading.Thread(target=keep, args=(i,)) for i in range(len(held))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_lost_leases_taken_again_by_racing_holders_never_pass_the_cap(conn):
    cap = 3
    for _ in range(5):
        conn.delete(keys.leases(CLIENT))
        held = [leases.hold(conn, CLIENT, cap, 5) for _ in range(2)]  # one slot left
        lost = [leases.Lease(conn, CLIENT, cap, 5, f"lost-{i}") for i in range(22)]  # in no set: dropped long ago
        kept = keep_together(held + lost)
        assert kept[:2] == [True, True] and sum(kept[2:]) == 1, kept  # the held stay; one lost one gets the slot
        members = {m.decode() for m in conn.zrange(keys.leases(CLIENT), 0, -1)}
        assert members == {lease.id for lease, ok in zip(held + lost, kept, strict=True) if ok}


def test_a_lease_is_due_several_times_in_its_seconds(conn):
    lease = leases.hold(conn, CLIENT, 2, 1)
    assert lease.every_s == pytest.approx(1 / leases.RENEWALS) and not lease.due()
    time.sleep(lease.every_s + 0.05)
    assert lease.due()
    assert lease.keep() and not lease.due()
