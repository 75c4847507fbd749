"""deval: profile how a language model samples. The Python API (the same functions the CLI calls):

    import deval
    r = deval.profile(model="d", backend="mock", tasks=["extreme", "flat"], runs=30)
    r.summary, r.verdict, r.steps, r.plot(), r.html("report.html")
    deval.load("runs/..."), deval.compare(["runs/a", "runs/b"])

Heavy modules load on first use, so `import deval` stays instant.
"""

from __future__ import annotations

from deval.version import __version__  # noqa: F401

__all__ = ["profile", "sweep", "calibration", "diversity", "load", "compare", "Result", "Comparison",
           "__version__"]
_LAZY = {"Result": ("deval.analyses.result", "Result"), "load": ("deval.analyses.result", "load"),
         "Comparison": ("deval.analyses.compare", "Comparison")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'deval' has no attribute '{name}'")


def _options(command, given: dict, renames: dict) -> dict:
    """The CLI command's option values: its defaults, then what the caller gave (by the API's or the CLI's name)."""
    import inspect

    from deval.errors import ConfigError

    params = {k: v for k, v in inspect.signature(command).parameters.items() if k != "json_out"}
    options = {}
    for name, p in params.items():
        default = p.default
        options[name] = getattr(default, "default", default) if default is not inspect.Parameter.empty else None
    for key, value in given.items():
        name = renames.get(key, key)
        if name not in params:
            raise ConfigError(f"deval.{command.__name__}() takes no '{key}'; it takes "
                              f"{', '.join(sorted({*params, *renames} - set(renames.values())))}")
        options[name] = value
    if isinstance(options.get("task"), str):
        options["task"] = [options["task"]]
    for key in ("task", "tasks_dir"):
        options[key] = list(options.get(key) or [])
    return options


RENAMES = {"tasks": "task", "out": "out_dir"}


def profile(model: str | None = None, tasks=("extreme", "flat"), runs: int = 10, *, backend: str = "local",
            progress=None, **options):
    """Profile a model on tasks (the options of `deval profile`, by their Python names); returns a Result."""
    from deval.analyses.profile import execute, load_config
    from deval.cli.common import profile_config
    from deval.cli.main import profile as command

    o = _options(command, {"model": model, "tasks": tasks, "runs": runs, "backend": backend, **options}, RENAMES)
    if o.get("resume") is not None:
        return execute(load_config(o["resume"]), resume=o["resume"], progress=progress)
    return execute(profile_config(o, o["temperature"]), out=o.get("out_dir"), progress=progress)


def sweep(model: str | None = None, temperatures=(0.5, 0.75, 1.0, 1.25, 1.5, 2.0), tasks=("extreme", "flat"),
          runs: int = 10, *, backend: str = "local", progress=None, **options):
    """Profile at several temperatures (the options of `deval sweep`); returns a Result."""
    from deval.analyses.sweep import SweepConfig, execute, load_sweep_config, parse_temperatures
    from deval.cli.common import profile_config
    from deval.cli.dynamics import sweep as command

    if not isinstance(temperatures, str):
        temperatures = ",".join(repr(float(t)) for t in temperatures)
    o = _options(command, {"model": model, "tasks": tasks, "runs": runs, "backend": backend,
                           "temperatures": temperatures, **options}, RENAMES)
    if o.get("resume") is not None:
        return execute(load_sweep_config(o["resume"]), resume=o["resume"], progress=progress)
    config = SweepConfig(base=profile_config(o), temperatures=parse_temperatures(o["temperatures"]))
    return execute(config, out=o.get("out_dir"), progress=progress)


def calibration(model: str | None = None, tasks=("vowels",), samples: int = 50, *, backend: str = "local",
                progress=None, **options):
    """Cutoff rules against the oracle on valid-set tasks (the options of `deval calibration`); returns a Result."""
    from deval.analyses.validity_execute import execute_calibration
    from deval.analyses.validity_runs import load_calibration_config
    from deval.cli.dynamics import calibration as command
    from deval.cli.dynamics import calibration_config

    if not isinstance(options.get("top_ks", ""), str):  # lists as in Python: [1, 5] -> "1,5"
        options["top_ks"] = ",".join(str(int(k)) for k in options["top_ks"])
    for key in ("top_ps", "min_ps"):
        if not isinstance(options.get(key, ""), str):
            options[key] = ",".join(repr(float(v)) for v in options[key])
    o = _options(command, {"model": model, "tasks": tasks, "samples": samples, "backend": backend, **options},
                 RENAMES)
    if o.get("resume") is not None:
        return execute_calibration(load_calibration_config(o["resume"]), resume=o["resume"], progress=progress)
    return execute_calibration(calibration_config(o), out=o.get("out_dir"), progress=progress)


def diversity(model: str | None = None, task: str = "us-states", samples: int = 100, *, compare=(),
              backend: str = "local", progress=None, **options):
    """Distinct valid outputs per budget for `model` and each of `compare` (the options of `deval diversity`)."""
    from deval.analyses.validity_execute import execute_diversity
    from deval.analyses.validity_runs import load_diversity_config
    from deval.cli.dynamics import diversity as command
    from deval.cli.dynamics import diversity_config

    o = _options(command, {"model": model, "samples": samples, "backend": backend, **options}, RENAMES)
    o["task"] = task
    if o.get("resume") is not None:
        return execute_diversity(load_diversity_config(o["resume"]), resume=o["resume"], progress=progress)
    return execute_diversity(diversity_config(o), models=[model, *compare], out=o.get("out_dir"), progress=progress)


def compare(runs, labels=None):
    """Runs side by side (profile or sweep run directories, or Results): metrics, differences, verdicts, config."""
    from deval.analyses.compare import compare_runs

    return compare_runs([getattr(r, "path", r) for r in runs], labels=labels)
