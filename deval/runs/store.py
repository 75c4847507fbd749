"""Run directories: manifest.json, steps.jsonl (appended and flushed as steps arrive), summary.json; and the
append-only JSON-lines logs that calibration and diversity runs write their records to."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from deval.core.protocol import Step
from deval.errors import ConfigError, RunStopped
from deval.jsonio import clean, dump_json, dump_line, dumps, read_json  # noqa: F401  (run files are JSON)

MANIFEST, STEPS, SUMMARY = "manifest.json", "steps.jsonl", "summary.json"


def claim_new_dir(path: Path, tries: int = 1000) -> Path:
    """Create a directory that did not exist (os.mkdir is atomic): `path`, else `path-2`, `path-3`, ..."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, tries + 1):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {candidate} ({exc.strerror}); choose another --out") \
                from None
    raise ConfigError(f"{path} and {tries - 1} numbered variants exist already; choose another --out")
def default_run_dir(kind: str, model: str) -> Path:
    """runs/<time>-<kind>-<model name>[-N]: where a run goes when no --out (or out=) is given, claimed atomically,
    so two runs started in the same second get different directories."""
    name = Path(model).stem if model else "model"
    prefix = f"{kind}-" if kind else ""
    return claim_new_dir(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}{name}")


def stopped(command: str, path: Path, exc: Exception) -> RunStopped:
    """A run that failed part-way: the cause, how far it got (records kept) and the command that finishes it."""
    kept = sum(len(RecordLog(p).read(repair=False)) for p in sorted(Path(path).rglob("*.jsonl")))
    error = RunStopped(f"{exc}; stopped with {kept} record{'s' * (kept != 1)} kept in {path}; fix the cause, then "
                       f"finish with: deval {command} --resume {path}")
    error.exit_code = 2 if isinstance(exc, ConfigError) else 1  # bad input found mid-run stays a usage error
    return error


def create_run_dir(path: Path, manifest: dict) -> Path:
    """A new run directory holding only its manifest; refuses one that already holds a run or other files.

    The manifest is linked into place (os.link fails if it exists), so two runs given the same --out at the
    same moment cannot both take the directory."""
    path = Path(path)
    if (path / MANIFEST).exists():
        raise ConfigError(f"{path} already holds a run; pass --resume {path} to finish it, or choose a new --out")
    if path.resolve() == Path.cwd().resolve() or (path.is_dir() and any(path.iterdir())):
        raise ConfigError(f"{path} is not empty and holds no run; choose a new directory for --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {path} ({exc.strerror}); choose another --out") from None
    tmp = path / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(dumps(manifest) + "\n", encoding="utf-8")
    try:
        os.link(tmp, path / MANIFEST)
    except FileExistsError:
        raise ConfigError(f"{path} was just taken by another run; choose a new --out") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def require(data, path: Path, keys: tuple[str, ...], what: str) -> dict:
    """A run file's JSON object with these keys, else a one-line error naming the file and the first gap."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a {what} (a JSON {type(data).__name__}, not an object); the run "
                          f"directory is damaged: start a new run")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ConfigError(f"{path} lacks '{missing[0]}'" + (" (it is empty)" if not data else "") +
                          f"; it is not a complete {what}: restore it, or start a new run")
    return data


def read_manifest(directory: Path) -> dict:
    """A run directory's manifest, checked to be an object with a schema and a config."""
    path = Path(directory) / MANIFEST
    data = require(read_json(path), path, ("schema", "config"), "deval run manifest")
    require(data["config"], path, (), "run config (field 'config')")
    return data


def parse_config(directory: Path, from_dict, config: dict):
    """from_dict(config), with a damaged or foreign config reported in one line naming the manifest."""
    try:
        return from_dict(config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"lacks '{exc.args[0]}'" if isinstance(exc, KeyError) else f"has a bad value ({exc})"
        raise ConfigError(f"{Path(directory) / MANIFEST}: the run config {what}; restore the file, or start a "
                          "new run") from None


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
        return read_manifest(self.path)

    def summary(self) -> dict:
        """The summary; when it is damaged, delete it and --resume to rewrite it from the records."""
        path = self.path / SUMMARY
        data = read_json(path)
        if not isinstance(data, dict) or "schema" not in data:
            require(data, path, ("schema",), "deval run summary")
        return data

    def has_summary(self) -> bool:
        return (self.path / SUMMARY).exists()

    def write_summary(self, summary: dict) -> None:
        dump_json(self.path / SUMMARY, summary)

    def steps(self) -> list[Step]:
        """Every complete step line; a torn last line (crash mid-write) is skipped."""
        return list(self.iter_steps())

    def iter_steps(self) -> Iterator[Step]:
        """Every complete step, read one line at a time (a run of any length is never held in memory)."""
        return (self._step(r) for r in self._log.records())

    def completed_runs(self) -> set[tuple[str, int]]:
        """The (task, run) pairs that finished; rewrites steps.jsonl without partial runs (and without a torn last
        line) so a resume can redo them."""
        seen: set[tuple[str, int]] = set()
        done: set[tuple[str, int]] = set()
        for r in self._log.records():
            key = self._key(r)
            seen.add(key)
            if r.get("final"):
                done.add(key)
        if seen != done or self._log.torn:
            self._log.rewrite(r for r in self._log.records() if self._key(r) in done)
        return done

    def completed_records(self) -> Iterator[dict]:
        """The records of finished runs, streamed (partial runs are cut off the file first)."""
        done = self.completed_runs()
        return (r for r in self._log.records() if self._key(r) in done)

    def iter_completed_steps(self) -> Iterator[Step]:
        """Steps of runs that finished, streamed."""
        return (self._step(r) for r in self.completed_records())

    def completed_steps(self) -> list[Step]:
        """Steps of runs that finished; rewrites steps.jsonl without partial runs so a resume can redo them."""
        return list(self.iter_completed_steps())

    def first_run_steps(self) -> list[Step]:
        """Per task, the steps of its lowest-numbered run (what a report's heat strip shows), streamed."""
        first: dict[str, list[Step]] = {}
        for r in self._log.records():
            task, run = self._key(r)
            held = first.get(task)
            if held is None or run < held[0].run:
                first[task] = [self._step(r)]
            elif run == held[0].run:
                held.append(self._step(r))
        return [s for steps in first.values() for s in steps]

    def _key(self, r: dict) -> tuple[str, int]:
        try:
            return r["task"], int(r["run"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(exc) from None

    def _step(self, r: dict) -> Step:
        try:
            return Step.from_record(r)
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: Exception) -> ConfigError:
        return ConfigError(f"{self._log.path}: a step record is damaged ({exc}); delete that line and --resume")

    def append(self, step: Step) -> None:
        self._log.append(step.to_record())

    def close(self) -> None:
        self._log.close()


class RecordLog:
    """An append-only JSON-lines file of records, flushed one by one, so a crash loses nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None
        self.torn = False  # set by records(): whether the last line read was torn (cut off by a crash)

    def read(self, repair: bool = True) -> list[dict]:
        """Every complete record; a torn last line (crash mid-write) is skipped, and with `repair` cut off the
        file so appends stay clean (readers of a run that may still be written leave the file alone)."""
        records = list(self.records())
        if repair and self.torn:
            self.rewrite(records)
        return records

    def records(self) -> Iterator[dict]:
        """Every complete record, one line at a time; a torn last line is skipped (and `torn` set once read)."""
        self.torn = False
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            bad = None
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                if bad is not None:
                    raise ConfigError(f"{self.path}: line {bad} is damaged; delete that line and --resume")
                try:
                    record = json.loads(raw.decode("utf-8", "replace"))
                except json.JSONDecodeError:
                    bad = n
                    continue
                self.torn = not raw.endswith(b"\n")
                yield record
            self.torn = self.torn or bad is not None

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the file's contents atomically (records may stream from the file itself)."""
        self.close()
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(dump_line(r) + "\n")
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(dump_line(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
