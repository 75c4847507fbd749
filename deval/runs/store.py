"""Run directories: manifest.json, steps.jsonl (appended and flushed as steps arrive), summary.json; and the
append-only JSON-lines logs that calibration and diversity runs write their records to."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from deval.core.protocol import Step
from deval.errors import ConfigError
from deval.jsonio import clean, dump_json, dumps, read_json  # noqa: F401  (run files are JSON)

MANIFEST, STEPS, SUMMARY = "manifest.json", "steps.jsonl", "summary.json"


def default_run_dir(kind: str, model: str) -> Path:
    """runs/<time>-<kind>-<model name>: where a run goes when no --out (or out=) is given."""
    name = Path(model).stem if model else "model"
    prefix = f"{kind}-" if kind else ""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}{name}"


def create_run_dir(path: Path, manifest: dict) -> Path:
    """A new run directory holding only its manifest; refuses one that already holds a run."""
    path = Path(path)
    if (path / MANIFEST).exists():
        raise ConfigError(f"{path} already holds a run; pass --resume {path} to finish it, or choose a new --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {path} ({exc.strerror}); choose another --out") from None
    dump_json(path / MANIFEST, manifest)
    return path


class RunDir:
    """One run directory. Steps are appended one JSON line each and flushed, so a crash loses nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._log = RecordLog(self.path / STEPS)

    @classmethod
    def create(cls, path: Path, manifest: dict) -> "RunDir":
        run_dir = cls(create_run_dir(path, manifest))
        (run_dir.path / STEPS).touch()
        return run_dir

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"run directory {path} not found; pass the --out directory of an earlier run")
        run_dir = cls(path)
        run_dir.manifest()  # fails clearly if missing or damaged
        return run_dir

    def manifest(self) -> dict:
        return read_json(self.path / MANIFEST)

    def summary(self) -> dict:
        return read_json(self.path / SUMMARY)

    def has_summary(self) -> bool:
        return (self.path / SUMMARY).exists()

    def write_summary(self, summary: dict) -> None:
        dump_json(self.path / SUMMARY, summary)

    def steps(self) -> list[Step]:
        """Every complete step line; a torn last line (crash mid-write) is skipped."""
        return self._steps(self._log.read(repair=False))

    def completed_steps(self) -> list[Step]:
        """Steps of runs that finished; rewrites steps.jsonl without partial runs so a resume can redo them."""
        records = self._log.read()
        steps = self._steps(records)
        done = {(s.task, s.run) for s in steps if s.final}
        kept = [s for s in steps if (s.task, s.run) in done]
        if len(kept) != len(steps):
            self._log.rewrite([s.to_record() for s in kept])
        return kept

    def _steps(self, records: list[dict]) -> list[Step]:
        try:
            return [Step.from_record(r) for r in records]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self._log.path}: a step record is damaged ({exc}); delete that line and "
                              f"--resume") from None

    def append(self, step: Step) -> None:
        self._log.append(step.to_record())

    def close(self) -> None:
        self._log.close()


class RecordLog:
    """An append-only JSON-lines file of records, flushed one by one, so a crash loses nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None

    def read(self, repair: bool = True) -> list[dict]:
        """Every complete record; a torn last line (crash mid-write) is skipped, and with `repair` cut off the
        file so appends stay clean (readers of a run that may still be written leave the file alone)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.decode("utf-8", "replace").splitlines()
        records = []
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(lines) - 1:
                    break
                raise ConfigError(f"{self.path}: line {n + 1} is damaged; delete that line and --resume") from None
        torn = len(records) != sum(1 for line in lines if line.strip()) or (data and not data.endswith(b"\n"))
        if repair and torn:
            self.rewrite(records)
        return records

    def rewrite(self, records: list[dict]) -> None:
        """Replace the file's contents atomically."""
        self.close()
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(dumps(r, indent=None) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(dumps(record, indent=None) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
