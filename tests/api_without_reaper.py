"""`diffusetv api` whose reaper never runs: a test-only hook (not a setting), so that the chaos test can show that it
fails on a stack that leaves a dead worker's runs `running`.

    python tests/api_without_reaper.py      # with the environment of `diffusetv api`
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, as `python -m diffusetv.cli` finds it

from app import reaper

reaper.Reaper.run = lambda self: None  # the thread starts, and does nothing: no run is ever re-queued

from diffusetv.cli import main  # noqa: E402

sys.exit(main(["api"]))
