"""On-disk state of an active-learning run: nothing is lost on a kill -9, nothing labelled twice.

* ``labelled.xyz``: append-only extended XYZ; each labelled structure is written with a
  single ``write`` system call and fsync'ed, carrying ``al_key`` and ``al_iteration``.
* ``journal.jsonl``: append-only, one JSON event per line (selected, labelled, failed,
  trained, stopped), fsync'ed.

Reading tolerates a torn last record (a power cut mid-write): it is ignored, reported,
and the file is truncated back to its last complete record.
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import ase.io

from incerta.data.frame import Frame
from incerta.data.io import KeyMap, frame_from_atoms


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class RunState:
    """Labels and journal of one active-learning folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.labels_path = self.folder / "labelled.xyz"
        self.journal_path = self.folder / "journal.jsonl"

    # journal -------------------------------------------------------------------------
    def log(self, event: str, **fields) -> None:
        """Append one event, stamped with the UTC time it was written."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _append(self.journal_path, (json.dumps({"event": event, "at": stamp, **fields}, default=float) + "\n").encode())

    def events(self, event: str | None = None) -> list[dict]:
        if not self.journal_path.exists():
            return []
        records = []
        for line in self.journal_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if event is None or record.get("event") == event:
                records.append(record)
        return records

    def failed_keys(self) -> set[str]:
        return {r["key"] for r in self.events("failed")}

    # labels --------------------------------------------------------------------------
    def append_label(self, key: str, iteration: int, frame: Frame) -> None:
        atoms = frame.to_atoms()
        atoms.info.update(al_key=key, al_iteration=iteration)
        buffer = io.StringIO()
        ase.io.write(buffer, atoms, format="extxyz")
        _append(self.labels_path, buffer.getvalue().encode())

    def labelled(self) -> list[tuple[str, Frame]]:
        """(key, frame) of every complete record, in the order they were written."""
        if not self.labels_path.exists():
            return []
        text = self.labels_path.read_text()
        lines = text.splitlines(keepends=True)
        records, position, offset = [], 0, 0
        while position < len(lines):
            try:
                count = int(lines[position].strip())
                chunk = lines[position: position + count + 2]
                if len(chunk) < count + 2 or not chunk[-1].endswith("\n"):
                    raise ValueError("incomplete record")
                atoms = ase.io.read(io.StringIO("".join(chunk)), format="extxyz")
            except (ValueError, IndexError) as err:
                self._truncate(offset, err)
                break
            frame = frame_from_atoms(atoms, f"{self.labels_path}, frame {len(records)}", KeyMap(), 1.0, 1.0)
            records.append((str(atoms.info["al_key"]), frame))
            offset += sum(len(line.encode()) for line in chunk)
            position += count + 2
        return records

    def _truncate(self, offset: int, error: Exception) -> None:
        with open(self.labels_path, "r+b") as handle:
            handle.truncate(offset)
        self.log("repaired", file=str(self.labels_path), kept_bytes=offset, reason=str(error))
