"""Server-Sent Events, read as the WHATWG HTML standard says (9.2.6, "Interpreting an event stream")."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .schema import FINAL


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: `event` is `status`, `progress` or `preview`; `data` its JSON object; `id` its
    stream id (what `Last-Event-ID` resumes after)."""

    event: str
    data: Any
    id: str | None = None

    @property
    def final(self) -> bool:
        """The job's last event: a status that ends it. The server closes the stream after it."""
        return self.event == "status" and isinstance(self.data, dict) and self.data.get("status") in FINAL


@dataclass
class EventParser:
    """Feed it the stream's lines (without their line ends); it returns an Event at each blank line that ends one."""

    last_id: str | None = None  # the id of the last event dispatched: what a reconnection resumes after
    _id: str | None = None  # the id of the event being read
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._id = self.last_id

    def feed(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # `retry` and unknown fields are ignored

    def reset(self) -> None:
        """The connection ended: an event it did not finish is dropped, its id too (`last_id` stays)."""
        self._id, self._event, self._data = self.last_id, "", []

    def _dispatch(self) -> Event | None:
        event, lines = self._event or "message", self._data
        self.last_id, self._event, self._data = self._id, "", []
        if not lines:
            return None  # an event with no data is not dispatched
        data = "\n".join(lines)
        try:
            value = json.loads(data)
        except ValueError:
            value = data
        return Event(event, value, self.last_id)
