"""A finished run as the Python API and the CLI see it: its summary, its directory, its records, its figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deval.errors import ConfigError
from deval.jsonio import clean
from deval.runs.store import MANIFEST, RecordLog, RunDir, read_json

KINDS = {"deval.profile": "profile", "deval.sweep": "sweep", "deval.calibration": "calibration",
         "deval.diversity": "diversity", "deval.layers": "layers", "deval.code": "code",
         "deval.recommend": "recommend"}
MANIFEST_COMMANDS = {"deval.manifest/1": "profile", "deval.sweep-manifest/1": "sweep",
                     "deval.calibration-manifest/1": "calibration", "deval.diversity-manifest/1": "diversity",
                     "deval.layers-manifest/1": "layers", "deval.code-manifest/1": "code",
                     "deval.recommend-manifest/1": "recommend"}
# the per-step records of each kind
RECORD_FILES = {"calibration": "nodes.jsonl", "diversity": "samples.jsonl", "layers": "layers.jsonl",
                "code": "samples.jsonl", "recommend": "samples.jsonl"}


def command_for(manifest: dict) -> str:
    """The deval command that wrote a run directory, from its manifest's schema."""
    return MANIFEST_COMMANDS.get(manifest.get("schema"), "profile")


def family(schema: str | None) -> str:
    """'deval.profile/1' -> 'deval.profile': figures and readers key on the family, so a new version still reads."""
    return str(schema or "").split("/")[0]


@dataclass(frozen=True)
class Result:
    """One run directory and its summary; `steps`, `plot()` and `html()` read the run files on demand."""

    summary: dict
    path: Path

    def __post_init__(self):  # the summary as its file holds it (NaN as None), whether fresh or loaded
        object.__setattr__(self, "summary", clean(self.summary))
        object.__setattr__(self, "path", Path(self.path))

    @property
    def kind(self) -> str:
        return KINDS.get(family(self.summary.get("schema")), family(self.summary.get("schema")))

    @property
    def verdict(self) -> dict | None:
        """The D/E verdict (profile), or the verdict at each temperature (sweep); None for other kinds."""
        if "verdict" in self.summary:
            return self.summary["verdict"]
        return self.summary.get("verdicts")

    @property
    def manifest(self) -> dict:
        return read_json(Path(self.path) / MANIFEST)

    def records(self) -> list[dict]:
        """The run's per-step records as plain dicts (sweep: every temperature's, with a 'temperature' key)."""
        if self.kind == "profile":
            return [s.to_record() for s in RunDir(self.path).steps()]
        if self.kind == "sweep":
            out = []
            for t, sub in self.summary.get("runs_dirs", {}).items():
                if (Path(self.path) / sub / MANIFEST).exists():
                    out += [{"temperature": float(t), **s.to_record()} for s in RunDir(Path(self.path) / sub).steps()]
            return out
        name = RECORD_FILES.get(self.kind)
        return RecordLog(Path(self.path) / name).read(repair=False) if name else []

    @property
    def steps(self):
        """The per-step records: a pandas DataFrame when pandas is installed, else a list of dicts."""
        records = self.records()
        try:
            import pandas
        except ImportError:
            return records
        return pandas.DataFrame.from_records(records)

    def context(self, first_run_only: bool = False) -> dict:
        """What the figures need beyond the summary: profile tasks and steps (read from the run files; with
        first_run_only, each task's lowest-numbered run, all the text report shows)."""
        if self.kind != "profile":
            return {}
        from deval.core.tasks import task_from_dict

        config = self.manifest.get("config", {})
        tasks = {t["name"]: task_from_dict({k: v for k, v in t.items() if k != "source"}, t.get("source", ""))
                 for t in config.get("tasks", [])}
        run_dir = RunDir(self.path)
        return {"tasks": tasks, "steps": run_dir.first_run_steps() if first_run_only else run_dir.steps()}

    def figures(self) -> list:
        """[(name, matplotlib Figure)] for this run (needs matplotlib: pip install 'deval[plots]')."""
        from deval.report.plots import figures

        return figures(self.summary, self.context())

    def plot(self, out: str | Path | None = None) -> "Figures":
        """The run's figures (a notebook shows them all); with `out`, also written there as PNG and SVG."""
        figs = self.figures()
        if out is not None:
            from deval.report.plots import save_figures

            save_figures(figs, Path(out))
        return Figures(f for _, f in figs)

    def html(self, file: str | Path) -> Path:
        """Write the self-contained HTML report of this run to `file`."""
        from deval.report.html import run_page

        Path(file).write_text(run_page(self.summary, self.context(), where=str(self.path)), encoding="utf-8")
        return Path(file)

    def __repr__(self) -> str:
        v = self.verdict
        said = f", verdict {v.get('type')}" if isinstance(v, dict) and "type" in v else ""
        return f"Result({self.kind} run in {self.path}{said})"


class Figures(list):
    """A list of matplotlib Figures that a notebook displays one below the other."""

    def _repr_html_(self) -> str:
        from deval.report.html import figure_html

        return "".join(figure_html([(str(i), f) for i, f in enumerate(self)]))


def load(path: str | Path) -> Result:
    """A finished run directory as a Result; a one-line error for a missing or unfinished one."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"run directory {path} not found; pass the --out directory of an earlier run")
    run_dir = RunDir.open(path)  # a damaged manifest is one line naming the file
    if not run_dir.has_summary():
        raise ConfigError(f"{path} has not finished; finish it with deval {command_for(run_dir.manifest())} "
                          f"--resume {path}")
    return Result(run_dir.summary(), path)
