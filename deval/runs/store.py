"""Run directories: manifest.json, steps.jsonl (appended and flushed as steps arrive), summary.json; and the
append-only JSON-lines logs that calibration and diversity runs write their records to."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from deval.core.protocol import Step
from deval.errors import ConfigError, RunStopped
from deval.jsonio import clean, dump_json, dumps, read_json  # noqa: F401  (run files are JSON)

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
