"""bench.job_bytes: Redis bytes per job by result store. It measures; the one claim checked here is the result store's
point: with S3 (or a directory), a job's Redis bytes do not grow with its image."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_redis_bytes_per_job_do_not_grow_with_the_image_outside_redis():
    from bench import job_bytes

    stores = job_bytes.stores()
    rows = [row for store in stores for row in job_bytes.measure_store(store)]
    by = {(r.store, r.size, r.kind): r for r in rows}
    assert {r.kind for r in rows} == {"new", "new, previews", "cache hit"} and {r.size for r in rows} == {32, 256}
    outside = stores[1]  # s3 where moto is installed, else file
    for kind in ("new", "new, previews"):
        small, big = by[outside, 32, kind], by[outside, 256, kind]
        assert abs(big.total / small.total - 1) <= 0.10, (kind, small, big)
        assert "blobs" not in big.parts and big.parts["registry"] > 0
        assert by["redis", 256, kind].parts["blobs"] > by["redis", 256, kind].png  # the PNG lives in Redis there
        assert by["redis", 256, kind].parts["registry"] > 0  # the registry counts for every store
    assert by["redis", 256, "new, previews"].parts["events"] > 10 * by["redis", 256, "new"].png  # inline previews
    assert "256x256 / 32x32" in job_bytes.format_rows(rows)
