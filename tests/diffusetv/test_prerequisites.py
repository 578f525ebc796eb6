"""The system packages `make run` and `make test` need: one table, installed only when missing, never a prompt."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffusetv import prerequisites
from helpers import REPO, require

APT_LOG = "apt.log"


def fake_bin(tmp_path: Path, creates: Path | None = None, sudo_ok: bool = True) -> Path:
    """A PATH folder whose apt-get and sudo log every call; `apt-get install` creates `creates`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / APT_LOG
    make_file = f'[ "$1" = install ] && touch {creates} && chmod +x {creates}\n' if creates else ""
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> {log}\n{make_file}exit 0\n')
    sudo = f'#!/bin/sh\necho "sudo $*" >> {log}\n[ "$1" = -n ] || exit 1\nshift\n'
    sudo += '[ "$1" = true ] && exit 0\nexec "$@"\n' if sudo_ok else "exit 1\n"
    (bin_dir / "sudo").write_text(sudo)
    for tool in ("apt-get", "sudo"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def apt_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / APT_LOG
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def chromium_missing(tmp_path, monkeypatch):
    """Chromium is missing (the setting names a path with nothing there); the font and venv are present."""
    target = tmp_path / "chromium"
    monkeypatch.setenv(prerequisites.CHROMIUM_SETTING, str(target))
    table = tuple(
        p if p.name == "chromium" else dataclasses.replace(p, present=lambda: True) for p in prerequisites.PREREQUISITES
    )
    monkeypatch.setattr(prerequisites, "PREREQUISITES", table)
    (tmp_path / "debian_version").write_text("12.0\n")
    monkeypatch.setattr(prerequisites, "DEBIAN_VERSION", str(tmp_path / "debian_version"))
    monkeypatch.delenv("CI", raising=False)
    return target


def test_the_table_names_each_package_and_what_proves_it():
    names = {p.name: p for p in prerequisites.PREREQUISITES}
    assert set(names) == {
        "python3-venv",
        "chromium",
        "emoji-font",
        "libatomic1",
        "curl",
        "g++",
        "python3-dev",
        "redis-server",
    }
    assert names["chromium"].package == "chromium" and prerequisites.DEBIAN_CHROMIUM in names["chromium"].proof
    assert names["emoji-font"].proof.endswith("NotoColorEmoji.ttf")
    assert names["redis-server"].package == "redis-server" and "/usr/bin/redis-server" in names["redis-server"].proof
    assert names["redis-server"].needed_for == ("test",)
    assert [p.name for p in prerequisites.PREREQUISITES if "run" in p.needed_for] == ["python3-venv"]


def test_the_table_and_the_emoji_data_agree_on_the_font():
    from diffusion import emoji

    entry = prerequisites.get("emoji-font")
    assert (entry.proof, entry.package) == (emoji.DEFAULT_FONT, emoji.FONT_PACKAGE)


def test_a_missing_package_is_installed_as_root_with_one_update(tmp_path, monkeypatch, chromium_missing):
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, creates=chromium_missing)}:{os.environ['PATH']}")
    monkeypatch.setattr(prerequisites.os, "geteuid", lambda: 0)
    assert prerequisites.install("test") == 0
    assert apt_calls(tmp_path) == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends chromium",
    ]
    assert prerequisites.install("test") == 0  # now present: no apt call at all
    assert len(apt_calls(tmp_path)) == 2


def test_without_root_it_uses_sudo_without_a_prompt(tmp_path, monkeypatch, chromium_missing):
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, creates=chromium_missing)}:{os.environ['PATH']}")
    monkeypatch.setattr(prerequisites.os, "geteuid", lambda: 1000)
    assert prerequisites.install("test") == 0
    calls = apt_calls(tmp_path)
    assert calls[0] == "sudo -n true" and all(c.startswith(("sudo -n ", "apt-get ")) for c in calls)
    assert "apt-get install -y -q --no-install-recommends chromium" in calls


def test_where_it_cannot_install_it_names_the_package_and_the_command(tmp_path, monkeypatch, capsys, chromium_missing):
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, sudo_ok=False)}:{os.environ['PATH']}")
    monkeypatch.setattr(prerequisites.os, "geteuid", lambda: 1000)
    assert prerequisites.install("test") == 0  # outside CI the suite goes on and skips by name
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1
    assert "chromium" in line and "sudo apt-get install --no-install-recommends chromium" in line
    assert "skipped by name" in line
    assert not [c for c in apt_calls(tmp_path) if c.startswith("apt-get")]

    monkeypatch.setenv("CI", "true")
    assert prerequisites.install("test") == 1  # CI stops before the tests
    assert "skipped" not in capsys.readouterr().err
    assert prerequisites.install("run") == 0  # `make run` does not need chromium


def test_a_package_that_installs_but_gives_no_file_is_still_missing(tmp_path, monkeypatch, capsys, chromium_missing):
    """Ubuntu's chromium package is a snap shim: apt succeeds, and /usr/bin/chromium is not Debian's."""
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path)}:{os.environ['PATH']}")
    monkeypatch.setattr(prerequisites.os, "geteuid", lambda: 0)
    monkeypatch.setenv("CI", "true")
    assert prerequisites.install("test") == 1
    assert "chromium" in capsys.readouterr().err


def test_the_skip_reason_names_the_package_and_the_install_command():
    reason = prerequisites.skip_reason("emoji-font")
    assert "fonts-noto-color-emoji" in reason and "apt-get install" in reason


def test_the_skip_reason_of_redis_7_names_debians_redis_server():
    reason = prerequisites.skip_reason("redis-server")
    assert "redis-server" in reason and "7 or newer" in reason
    assert reason.endswith("apt-get install --no-install-recommends redis-server`")


def fake_redis_server(path: Path, version: str) -> Path:
    path.write_text(f'#!/bin/sh\necho "Redis server v={version} sha=00000000:0 malloc=libc bits=64"\n')
    path.chmod(0o755)
    return path


def test_redis_7_is_debians_else_one_on_path_that_says_7_or_newer(tmp_path, monkeypatch):
    debian = tmp_path / "debian" / "redis-server"
    debian.parent.mkdir()
    on_path = tmp_path / "bin" / "redis-server"
    on_path.parent.mkdir()
    monkeypatch.setattr(prerequisites, "DEBIAN_REDIS", str(debian))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert prerequisites.redis_server_path() is None and not prerequisites.get("redis-server").present()
    fake_redis_server(on_path, "6.2.14")  # the embedded one, on an activated virtualenv's PATH
    assert prerequisites.redis_server_version(str(on_path)) == "6.2.14"
    assert prerequisites.redis_server_path() is None
    fake_redis_server(on_path, "7.2.4")
    assert prerequisites.redis_server_path() == str(on_path) and prerequisites.get("redis-server").present()
    fake_redis_server(debian, "7.0.15")
    assert prerequisites.redis_server_path() == str(debian)
    debian.write_text("#!/bin/sh\nexit 1\n")  # says no version: not a proof
    assert prerequisites.redis_server_path() == str(on_path)


def test_chromium_can_be_named_by_a_setting(tmp_path, monkeypatch):
    other = tmp_path / "chrome"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv(prerequisites.CHROMIUM_SETTING, str(other))
    assert prerequisites.chromium_path() == str(other) and prerequisites.get("chromium").present()
    other.chmod(0o644)
    assert not prerequisites.get("chromium").present()


def make(*args: str, path: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "-C", str(REPO), *args], capture_output=True, text=True, env=env, timeout=120)


def test_make_deps_makes_no_apt_call_when_everything_is_present(tmp_path):
    absent = prerequisites.missing("test")
    require(not absent, f"needs every prerequisite: {[p.package for p in absent]}")
    path = f"{fake_bin(tmp_path)}:{os.environ['PATH']}"
    proc = make("deps-test", f"PYTHON={sys.executable}", path=path, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert apt_calls(tmp_path) == []


def test_make_refuses_a_python_it_does_not_support_with_one_clear_line(tmp_path):
    fake = tmp_path / "python3.13"
    fake.write_text('#!/bin/sh\ncase "$2" in *platform*) echo 3.13.1;; *) exit 1;; esac\n')
    fake.chmod(0o755)
    proc = make("run", f"PYTHON={fake}", path=os.environ["PATH"], tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "is Python 3.13.1" in proc.stderr and "PYTHON=python3.12" in proc.stderr
    proc = make("test", "PYTHON=no-such-python", path=os.environ["PATH"], tmp_path=tmp_path)
    assert proc.returncode == 2 and "no 'no-such-python' here" in proc.stderr


def test_without_a_venv_capable_python_no_target_can_go_on(tmp_path, monkeypatch, capsys):
    table = tuple(
        dataclasses.replace(p, present=lambda: False) if p.name == "python3-venv" else p
        for p in prerequisites.PREREQUISITES
    )
    monkeypatch.setattr(prerequisites, "PREREQUISITES", table)
    monkeypatch.setattr(prerequisites, "DEBIAN_VERSION", str(tmp_path / "not-debian"))
    monkeypatch.delenv("CI", raising=False)
    assert prerequisites.install("run") == 1
    assert "python3-venv" in capsys.readouterr().err
