"""WEBHOOK_SECRETS_FILE as the notifier reads it (app.core.signing.SecretsFile): cached by (mtime, size), and a file
caught half written keeps the last good table."""

from __future__ import annotations

import json
import os

import pytest

from app.core.signing import SecretsFile, new_secret, secret_key


def write(path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_the_table_is_read_again_only_when_the_file_changes(tmp_path):
    path, first, second = tmp_path / "secrets.json", new_secret(), new_secret()
    write(path, json.dumps({"o": first}), 1_000_000_000)
    cache = SecretsFile()
    assert cache.table(path) == {"o": [secret_key(first)]}
    write(path, json.dumps({"p": first}), 1_000_000_000)  # the same (mtime, size): not read again
    assert cache.table(path) == {"o": [secret_key(first)]}
    write(path, json.dumps({"o": second}), 2_000_000_000)
    assert cache.table(path) == {"o": [secret_key(second)]}


def test_a_half_written_file_keeps_the_last_good_table(tmp_path, caplog):
    path, secret = tmp_path / "secrets.json", new_secret()
    write(path, json.dumps({"o": secret}), 1_000_000_000)
    cache = SecretsFile()
    good = cache.table(path)
    write(path, '{"o": "whsec_', 2_000_000_000)
    assert cache.table(path) == good
    assert "keeping the last good table" in caplog.text
    write(path, json.dumps({"p": secret}), 3_000_000_000)
    assert cache.table(path) == {"p": [secret_key(secret)]}


def test_a_file_never_read_well_is_an_error(tmp_path):
    path = tmp_path / "secrets.json"
    path.write_text("[]")
    with pytest.raises(ValueError):
        SecretsFile().table(path)
