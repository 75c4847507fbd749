"""The CLI's boundary: click parameter types and callbacks for options, and one error line for every failure.

Every bad input ends in one line on stderr, `error: what was wrong (the value); the fix`, and exit code 2 for
usage errors (options, files, run directories), 1 for failures at run time; no traceback unless --debug
(anywhere on the command line) or DEVAL_DEBUG=1.
"""

from __future__ import annotations

import math
import os
import re
import sys
import traceback
from pathlib import Path

import typer

from deval.errors import ConfigError, DevalError

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import core as _click_core, exceptions as _click_exceptions, globals as _click_globals
except ImportError:  # older typer runs on click itself
    from click import core as _click_core, exceptions as _click_exceptions, globals as _click_globals

UsageError = _click_exceptions.UsageError
NoArgsIsHelpError = getattr(_click_exceptions, "NoArgsIsHelpError", ())
ABORTS = tuple({typer.Abort, getattr(_click_exceptions, "Abort", typer.Abort)})
EXITS = tuple({typer.Exit, getattr(_click_exceptions, "Exit", typer.Exit)})

DEBUG_FLAG = "--debug"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEY_LIKE = re.compile(r"^(sk|pk|rk|gsk|hf|xai|key|api)[-_]", re.I)  # how pasted API keys usually start


def _number_text(value) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


class Number:
    """An option's parser (typer.Option(parser=...)): a finite int or float in a range; the error names the value,
    the range and an example that works."""

    def __init__(self, kind: type, lo=None, hi=None, lo_open: bool = False, example=None):
        self.kind, self.lo, self.hi, self.lo_open = kind, lo, hi, lo_open
        self.example = example
        self.name = "integer" if kind is int else "number"

    def _span(self) -> str:
        lo = (f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}") if self.lo is not None else ""
        hi = f"<= {self.hi}" if self.hi is not None else ""
        return " and ".join(s for s in (lo, hi) if s)

    def fail(self, what: str, value) -> None:
        example = f"; e.g. {self.example}" if self.example is not None else ""
        raise typer.BadParameter(f"must be {what} (got {_number_text(value)}){example}")

    def __call__(self, value):
        kind = "a whole number" if self.kind is int else "a number"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            try:
                number = float(text) if self.kind is float else int(text)
            except ValueError:
                try:  # 1e3 as an integer is fine; 2.5 or 'ten' is not
                    as_float = float(text)
                except ValueError:
                    as_float = None
                if self.kind is int and as_float is not None and math.isfinite(as_float) and as_float.is_integer():
                    number = int(as_float)
                else:
                    self.fail(f"{kind} {self._span()}".strip(), text)
        if isinstance(number, float) and not math.isfinite(number):
            self.fail(f"a finite number {self._span()}".strip(), value)
        if self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo):
            self.fail((f"> {self.lo:g}" if self.lo_open else f">= {self.lo:g}"), number)
        if self.hi is not None and number > self.hi:
            self.fail(f"<= {self.hi}", number)
        return self.kind(number)


def out_dir(value) -> Path | None:
    """--out's parser: a new run directory; empty or blank (the working directory) and existing files are refused."""
    if value is None or isinstance(value, Path):
        return value
    text = str(value)
    if not text.strip():
        raise typer.BadParameter("must not be empty (got ''): that would write the run into the working directory; "
                                 "give a new directory, e.g. --out runs/my-run")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"must be a directory (got {text}, a file); give a new one, e.g. --out {text}-run")
    return path


def mask(secret: str) -> str:
    """A secret shown as its first 3 characters and its length: enough to recognise, useless to steal."""
    return f"{secret[:3]}*** ({len(secret)} characters)"


def looks_like_key(value: str) -> bool:
    return bool(KEY_LIKE.match(value)) or (len(value) >= 32 and any(c.isdigit() for c in value)
                                           and any(c.islower() for c in value) and any(c.isupper() for c in value))


def api_key_env(ctx, param, value):
    """--api-key-env: the NAME of an environment variable; a pasted key is refused without being echoed."""
    if value is None:
        return None
    if not ENV_NAME.match(value) or looks_like_key(value):
        if looks_like_key(value) or len(value) >= 20:
            raise typer.BadParameter(f"takes the name of an environment variable, not the key itself (got "
                                     f"{mask(value)}); run export MY_KEY=... and pass --api-key-env MY_KEY")
        raise typer.BadParameter(f"must name an environment variable (letters, digits, _; got {value!r}); "
                                 "e.g. --api-key-env OPENAI_API_KEY")
    if not os.environ.get(value):
        raise typer.BadParameter(f"names ${value}, which is not set or empty; run export {value}=... first, or name "
                                 "another variable")
    return value


def base_url(ctx, param, value):
    """--base-url: an http(s) URL with a host (secrets in it are never echoed)."""
    if value is None:
        return None
    from deval.backends.urls import url_problem

    problem = url_problem(value, "--base-url")
    if problem:
        raise ConfigError(problem)
    return value


def env_base_url(backend: str, given: str | None) -> None:
    """The openai preset reads $OPENAI_BASE_URL when --base-url is not given: check it, naming the variable."""
    if given is not None or backend != "openai" or not os.environ.get("OPENAI_BASE_URL"):
        return
    from deval.backends.urls import url_problem

    problem = url_problem(os.environ["OPENAI_BASE_URL"], "$OPENAI_BASE_URL")
    if problem:
        raise ConfigError(problem + "; fix the variable or pass --base-url")


def given_options(ctx) -> dict:
    """The options typed on the command line (not left at their defaults), by parameter name."""
    return {name: value for name, value in ctx.params.items()
            if ctx.get_parameter_source(name) not in (_click_core.ParameterSource.DEFAULT, None)}


RESUME_FREE = {"resume", "json_out", "base_url", "api_key_env", "debug"}  # may differ on --resume


def refuse_changed_on_resume(stored: dict, path) -> None:
    """--resume keeps the run's config: an option given again must match it, or the resume is refused."""
    ctx = _click_globals.get_current_context()
    flat = dict(stored)
    flat.update(stored.get("filters") or {})
    flat.update(stored.get("backend_options") or {})
    if "order" in flat:
        flat.setdefault("filter_order", flat["order"])
    if "tasks" in stored:
        flat["task"] = stored["tasks"]
    for name, value in given_options(ctx).items():
        if name in RESUME_FREE:
            continue
        flag = "--" + name.replace("_", "-").replace("out-dir", "out")
        if name not in flat:
            raise ConfigError(f"{flag} cannot be changed on --resume (the run in {path} keeps its own config); "
                              f"drop {flag}, or start a new run without --resume")
        have, want = _plain(flat[name]), _plain(value)
        if isinstance(have, list) and not isinstance(want, list):
            want = _plain(str(want).split(","))
        if isinstance(want, list) and not isinstance(have, list):
            have = [have]
        if have != want:
            raise ConfigError(f"{flag} {_shown(want)} differs from the run's config ({name} = {_shown(have)} in "
                              f"{path}/manifest.json); drop {flag} to resume, or start a new run without --resume")


def _plain(value):
    """A stored or typed option value in one comparable form: names for tasks, floats for numbers, lists."""
    if isinstance(value, dict) and "name" in value:
        return value["name"]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


OWN_WORDING = ("must ", "takes ", "names ")  # how this module's parsers and callbacks start their messages


def usage_line(exc: UsageError) -> str:
    """click's multi-line usage error as one line that names where help is."""
    param = getattr(exc, "param", None)
    if isinstance(exc, typer.BadParameter) and param is not None and str(exc.message).startswith(OWN_WORDING):
        return f"{param.opts[0] if param.opts else param.name} {one_line(exc.message)}"  # ours: it names the fix
    else:
        message = one_line(exc.format_message())
        message = message[0].lower() + message[1:] if message[:1].isupper() else message
    command = exc.ctx.command_path if exc.ctx is not None else "deval"
    command = "deval" + command[len(command.split(" ")[0]):] if command else "deval"
    if "--help" in message:
        return message
    return f"{message.rstrip('.')}; see '{command} --help'"


def run_app(app, argv: list[str] | None = None, console=None) -> int:
    """Run the typer app on argv; every failure becomes one line on stderr and an exit code (no traceback)."""
    from rich.markup import escape

    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get("DEVAL_DEBUG") == "1"
    args = [a for a in args if a != DEBUG_FLAG]

    def say(message: str) -> None:
        if console is not None:
            console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
        else:
            print(f"error: {one_line(message)}", file=sys.stderr)

    try:
        from typer.main import get_command

        cmd = get_command(app)
        result = cmd.main(args=args, prog_name="deval", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx is not None else "deval --help")
        return 0
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        say(usage_line(exc))
        return 2
    except ABORTS:
        print("interrupted", file=sys.stderr)
        return 130
    except EXITS as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except DevalError as exc:
        if debug:
            traceback.print_exc()
        say(str(exc))
        return getattr(exc, "exit_code", 2)
    except MemoryError:
        if debug:
            traceback.print_exc()
        say("out of memory; lower --runs, --steps or --samples")
        return 1
    except Exception as exc:  # a bug: one line, and the way to see more
        if debug:
            traceback.print_exc()
        say(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback and report it")
        return 1


def check_total(runs: int, steps: int | None, task_steps: list[int], limit: int = 1_000_000) -> None:
    """Refuse a run whose step records would not fit in memory (runs x steps x tasks)."""
    total = sum(runs * (steps or s) for s in task_steps)
    if total > limit:
        raise ConfigError(f"--runs {runs} x --steps x {len(task_steps)} task(s) = {total:,} step records, more than "
                          f"{limit:,}; lower --runs or --steps")


def distinct_tasks(tasks) -> None:
    """Two chosen tasks with one name would mix their records in one summary entry: refuse, naming both."""
    seen = {}
    for task in tasks:
        if task.name in seen:
            raise ConfigError(f"two tasks are named '{task.name}': {seen[task.name] or 'shipped'} and "
                              f"{task.source or 'shipped'}; rename one (field 'name')")
        seen[task.name] = task.source


__all__ = ["Number", "ConfigError", "api_key_env", "base_url", "env_base_url", "out_dir", "refuse_changed_on_resume",
           "run_app", "check_total"]
