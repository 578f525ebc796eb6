"""DIFFUSETV_LOG_FORMAT: text lines, or one JSON object a line."""

from __future__ import annotations

import json
import logging

from app.core.logs import configure_logging


def test_json_lines_carry_level_logger_and_message(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json")
        logging.getLogger("diffusetv.worker").warning("loaded %s in %.1f s", "emoji32@1", 2.5)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("rq.worker").exception("job failed")
        lines = capsys.readouterr().err.strip().splitlines()
        first, second = (json.loads(line) for line in lines[-2:])
        assert (first["level"], first["logger"], first["message"]) == (
            "WARNING",
            "diffusetv.worker",
            "loaded emoji32@1 in 2.5 s",
        )
        assert first["time"].endswith("Z") and "T" in first["time"]
        assert second["logger"] == "rq.worker" and "ValueError: boom" in second["exc_info"]
        configure_logging("text")
        logging.getLogger("diffusetv.api").info("plain")
        assert capsys.readouterr().err.rstrip().endswith("INFO diffusetv.api: plain")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
