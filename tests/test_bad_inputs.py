"""Table-driven: bad inputs of every kind end in one line on stderr, the right exit code, no traceback, the fix.

The CLI runs in-process (deval.cli.validate.run_app, as `deval` does) against the mock backend and small stub
servers on 127.0.0.1, so the whole table stays fast; a few cases also run as a real subprocess.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import run_cli
from deval.cli.main import app
from deval.cli.validate import run_app

MOCK = ["--backend", "mock", "--model", "d"]
GOOD_TASK = """name = "mine"
items = ["a", "b"]
weights = [0.5, 0.5]
prompt = "Write {steps} letters from {items} with {distribution}."
"""
SECRET = "sk-live-Z9qXw7Rt5Yu3Io1Pa8Sd6Fg4Hj2Kl0MnBvCx"


def task_text(**changes) -> str:
    """GOOD_TASK with some fields replaced (raw TOML values) or added."""
    lines = dict(line.split(" = ", 1) for line in GOOD_TASK.strip().splitlines())
    lines.update(changes)
    return "".join(f"{k} = {v}\n" for k, v in lines.items() if v is not None)


# -- stub endpoints that misbehave ----------------------------------------------------------------------------

class Endpoint(BaseHTTPRequestHandler):
    """Answers every request with the server's `mode`: html, html404, 401, 403."""

    def do_POST(self):  # noqa: N802
        self.server.hits.append((self.path, self.headers.get("Authorization")))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode = self.server.mode
        if mode.startswith("html"):
            status, kind = (404 if mode == "html404" else 200), "text/html"
            body = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"
        else:
            status, kind = int(mode), "application/json"
            body = json.dumps({"error": {"message": "Incorrect API key provided"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def endpoint():
    servers = {}

    def start(mode: str) -> str:
        if mode not in servers:
            server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
            server.mode, server.hits = mode, []
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers[mode] = server
        return f"http://127.0.0.1:{servers[mode].server_address[1]}/v1"

    start.servers = servers
    yield start
    for server in servers.values():
        server.shutdown()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A small finished mock profile run (copied before any case damages it)."""
    path = tmp_path_factory.mktemp("runs") / "done"
    assert run_app(app, ["profile", *MOCK, "--task", "coin", "--runs", "2", "--steps", "3", "--out", str(path),
                         "--json"]) == 0
    return path


# -- the table --------------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    args: list  # "{tmp}", "{run}" (a copy of a finished run), "{url:MODE}" are filled in
    says: tuple  # every one of these appears in the error line (what, the value, the fix)
    code: int = 2
    files: dict = field(default_factory=dict)  # path under tmp -> text (a file to create first)
    env: dict = field(default_factory=dict)
    damage: dict = field(default_factory=dict)  # file in the copied run -> new text (None: delete)
    hidden: str | None = None  # must NOT appear anywhere in the output (a secret)


P = ["profile", *MOCK]

CASES = [
    # options: numbers that are not numbers, out of range, not finite
    Case("runs-word", P + ["--runs", "ten"], ("--runs", "whole number", "'ten'", "e.g. 10")),
    Case("runs-zero", P + ["--runs", "0"], ("--runs must be >= 1", "(got 0)")),
    Case("runs-negative", P + ["--runs", "-3"], ("--runs must be >= 1",)),
    Case("runs-fraction", P + ["--runs", "2.5"], ("--runs", "whole number", "2.5")),
    Case("runs-huge", P + ["--runs", "1e9"], ("--runs must be <= 100000",)),
    Case("runs-missing-value", P + ["--runs"], ("--runs", "requires an argument", "--help")),
    Case("steps-huge", P + ["--steps", "1e9"], ("--steps must be <= 10000", "1000000000")),
    Case("steps-huge-int", P + ["--steps", "1000000000"], ("--steps must be <= 10000",)),
    Case("steps-zero", P + ["--steps", "0"], ("--steps must be >= 1",)),
    Case("steps-word", P + ["--steps", "many"], ("--steps", "whole number", "'many'")),
    Case("steps-times-runs", P + ["--runs", "100000", "--steps", "10000"], ("step records", "lower --runs or --steps")),
    Case("temperature-word", P + ["--temperature", "warm"], ("--temperature", "a number", "'warm'", "e.g. 1.0")),
    Case("temperature-zero", P + ["--temperature", "0"], ("--temperature must be > 0",)),
    Case("temperature-negative", P + ["--temperature", "-1"], ("--temperature must be > 0",)),
    Case("temperature-nan", P + ["--temperature", "nan"], ("--temperature must be a finite number",)),
    Case("temperature-inf", P + ["--temperature", "inf"], ("--temperature must be a finite number",)),
    Case("temperature-huge", P + ["--temperature", "1e6"], ("--temperature must be <= 100",)),
    Case("seed-negative", P + ["--seed", "-1"], ("--seed must be >= 0", "(got -1)")),
    Case("seed-word", P + ["--seed", "lucky"], ("--seed", "whole number", "'lucky'")),
    Case("seed-fraction", P + ["--seed", "1.5"], ("--seed", "whole number",)),
    Case("timeout-nan", ["profile", "--backend", "llama-server", "--model", "m", "--timeout", "nan"],
         ("--timeout must be a finite number", "'nan'")),
    Case("timeout-zero", P + ["--timeout", "0"], ("--timeout must be > 0",)),
    Case("timeout-negative", P + ["--timeout", "-5"], ("--timeout must be > 0",)),
    Case("timeout-inf", P + ["--timeout", "inf"], ("--timeout must be a finite number",)),
    Case("retry-budget-negative", P + ["--retry-budget", "-1"], ("--retry-budget must be >= 0",)),
    Case("retry-budget-nan", P + ["--retry-budget", "nan"], ("--retry-budget must be a finite number",)),
    Case("ctx-1e8", ["profile", "--ctx", "1e8"], ("--ctx must be <= 1048576", "e.g. 4096")),
    Case("ctx-small", ["profile", "--ctx", "10"], ("--ctx must be >= 64",)),
    Case("ctx-word", ["profile", "--ctx", "big"], ("--ctx", "whole number", "'big'")),
    Case("threads-zero", ["profile", "--threads", "0"], ("--threads must be >= 1",)),
    Case("gpu-layers", ["profile", "--gpu-layers", "-2"], ("--gpu-layers must be >= -1",)),
    Case("top-k-zero", P + ["--top-k", "0"], ("--top-k must be >= 1",)),
    Case("top-p-zero", P + ["--top-p", "0"], ("--top-p must be > 0",)),
    Case("top-p-big", P + ["--top-p", "1.5"], ("--top-p must be <= 1",)),
    Case("top-p-nan", P + ["--top-p", "nan"], ("--top-p must be a finite number",)),
    Case("min-p-negative", P + ["--min-p", "-0.1"], ("--min-p must be >= 0",)),
    Case("min-p-big", P + ["--min-p", "2"], ("--min-p must be <= 1",)),
    Case("top-logprobs-zero", P + ["--top-logprobs", "0"], ("--top-logprobs must be >= 1",)),
    Case("concurrency-zero", P + ["--concurrency", "0"], ("--concurrency must be >= 1",)),
    Case("max-tokens-zero", P + ["--max-tokens", "0"], ("--max-tokens must be >= 1",)),
    Case("mode", P + ["--mode", "random"], ("--mode must be one of", "sequence", "random")),
    Case("filter-order", P + ["--filter-order", "sideways"], ("--filter-order must be one of", "sideways")),
    Case("option-for-other-backend", P + ["--timeout", "5"], ("--timeout does not apply to the mock backend",
                                                               "drop it")),
    Case("unknown-option", P + ["--nope"], ("no such option: --nope", "deval profile --help")),
    Case("unknown-command", ["profiel"], ("no such command", "profiel", "deval --help")),
    Case("unknown-backend", ["profile", "--backend", "nope"], ("unknown backend 'nope'",)),
    Case("unknown-mock-model", ["profile", "--backend", "mock", "--model", "zz"], ("unknown mock model 'zz'",)),
    Case("unknown-task", P + ["--task", "nosuch"], ("unknown task 'nosuch'", "deval tasks")),
    Case("valid-set-task-in-profile", P + ["--task", "vowels"], ("valid-set task", "deval calibration")),
    Case("sweep-temperatures-word", ["sweep", *MOCK, "--temperatures", "warm"], ("--temperatures", "'warm'",
                                                                                  "0.5,1,2")),
    Case("sweep-temperatures-zero", ["sweep", *MOCK, "--temperatures", "0,1"], ("--temperatures", "> 0")),
    Case("sweep-runs-word", ["sweep", *MOCK, "--runs", "few"], ("--runs", "whole number")),
    Case("calibration-samples-zero", ["calibration", "--samples", "0"], ("--samples must be >= 1",)),
    Case("calibration-top-ks", ["calibration", "--top-ks", "a,b"], ("--top-ks must be integers", "'a,b'")),
    Case("calibration-top-ps", ["calibration", "--top-ps", "2"], ("--top-ps", "2", "outside")),
    Case("calibration-temperature-nan", ["calibration", "--temperature", "nan"], ("--temperature must be a finite",)),
    Case("diversity-samples-negative", ["diversity", "--samples", "-1"], ("--samples must be >= 1",)),
    Case("diversity-seed-word", ["diversity", "--seed", "x"], ("--seed", "whole number")),
    # task files
    Case("task-weight-nan", P + ["--task", "{tmp}/t.toml"], ("field 'weights'", "finite", "nan"),
         files={"t.toml": task_text(weights="[nan, 0.5]")}),
    Case("task-weight-inf", P + ["--task", "{tmp}/t.toml"], ("field 'weights'", "finite", "inf"),
         files={"t.toml": task_text(weights="[inf, 0.5]")}),
    Case("task-weight-negative", P + ["--task", "{tmp}/t.toml"], ("field 'weights'", ">= 0"),
         files={"t.toml": task_text(weights="[-0.5, 1.5]")}),
    Case("task-weight-sum", P + ["--task", "{tmp}/t.toml"], ("field 'weights'", "sum to 1", "0.9"),
         files={"t.toml": task_text(weights="[0.4, 0.5]")}),
    Case("task-weight-string", P + ["--task", "{tmp}/t.toml"], ("field 'weights'", "number"),
         files={"t.toml": task_text(weights='["a", 0.5]')}),
    Case("task-item-has-separator", P + ["--task", "{tmp}/t.toml"], ("field 'items'", "'a,b'", "separator"),
         files={"t.toml": task_text(items='["a,b", "c"]')}),
    Case("task-item-has-own-separator", P + ["--task", "{tmp}/t.toml"], ("'x;y'", "separator", "';'"),
         files={"t.toml": task_text(items='["x;y", "z"]', separator='";"')}),
    Case("task-items-duplicate", P + ["--task", "{tmp}/t.toml"], ("field 'items'", "distinct"),
         files={"t.toml": task_text(items='["a", "a"]')}),
    Case("task-one-item", P + ["--task", "{tmp}/t.toml"], ("field 'items'", "at least two"),
         files={"t.toml": task_text(items='["a"]', weights="[1.0]")}),
    Case("task-weights-length", P + ["--task", "{tmp}/t.toml"], ("field 'weights'", "2 numbers"),
         files={"t.toml": task_text(weights="[1.0]")}),
    Case("task-unknown-field", P + ["--task", "{tmp}/t.toml"], ("field 'colour'", "unknown field"),
         files={"t.toml": task_text(colour='"red"')}),
    Case("task-missing-prompt", P + ["--task", "{tmp}/t.toml"], ("field 'prompt'", "missing; add it"),
         files={"t.toml": task_text(prompt=None)}),
    Case("task-bad-placeholder", P + ["--task", "{tmp}/t.toml"], ("field 'prompt'", "placeholder", "{items}"),
         files={"t.toml": task_text(prompt='"Write {foo}."')}),
    Case("task-not-toml", P + ["--task", "{tmp}/t.toml"], ("not valid TOML", "fix the syntax"),
         files={"t.toml": "name = = 'x'\n"}),
    Case("task-empty-file", P + ["--task", "{tmp}/t.toml"], ("field 'name'", "missing"), files={"t.toml": ""}),
    Case("task-mode", P + ["--task", "{tmp}/t.toml"], ("field 'mode'", "must be one of"),
         files={"t.toml": task_text(mode='"weird"')}),
    Case("task-steps-zero", P + ["--task", "{tmp}/t.toml"], ("field 'steps'", ">= 1"),
         files={"t.toml": task_text(steps="0")}),
    Case("task-separator-blank", P + ["--task", "{tmp}/t.toml"], ("field 'separator'", "non-blank"),
         files={"t.toml": task_text(separator='" "')}),
    Case("task-file-missing", P + ["--task", "{tmp}/absent.toml"], ("absent.toml not found", "check the path")),
    Case("tasks-dir-missing", P + ["--tasks-dir", "{tmp}/nodir"], ("tasks directory", "not found")),
    Case("tasks-same-name", P + ["--tasks-dir", "{tmp}/tasks"], ("two tasks are named 'mine'", "one.toml",
                                                                 "two.toml", "rename one"),
         files={"tasks/one.toml": GOOD_TASK, "tasks/two.toml": GOOD_TASK}),
    Case("tasks-same-name-as-shipped", P + ["--tasks-dir", "{tmp}/tasks"], ("two tasks are named 'coin'",
                                                                            "coin.toml", "mycoin.toml"),
         files={"tasks/mycoin.toml": task_text(name='"coin"')}),
    Case("tasks-chosen-same-name", P + ["--task", "{tmp}/a.toml", "--task", "{tmp}/b.toml"],
         ("two tasks are named 'mine'", "a.toml", "b.toml"), files={"a.toml": GOOD_TASK, "b.toml": GOOD_TASK}),
    Case("task-file-named-like-shipped", P + ["--task", "coin", "--task", "{tmp}/c.toml"],
         ("two tasks are named 'coin'", "c.toml"), files={"c.toml": task_text(name='"coin"')}),
    # files and paths: --out
    Case("out-empty", P + ["--out", ""], ("--out must not be empty", "working directory", "--out runs/my-run")),
    Case("out-blank", P + ["--out", "  "], ("--out must not be empty",)),
    Case("out-is-file", P + ["--out", "{tmp}/f.txt"], ("--out must be a directory", "f.txt"),
         files={"f.txt": "x"}),
    Case("out-not-empty", P + ["--out", "{tmp}/full"], ("full is not empty and holds no run", "new directory"),
         files={"full/notes.txt": "mine"}),
    Case("out-holds-run", P + ["--out", "{run}"], ("already holds a run", "--resume")),
    Case("out-below-file", P + ["--out", "{tmp}/f.txt/sub"], ("cannot create run directory", "another --out"),
         files={"f.txt": "x"}),
    # run directories: --resume and report
    Case("resume-missing", ["profile", "--resume", "{tmp}/none"], ("run directory", "not found", "--out")),
    Case("resume-no-manifest", ["profile", "--resume", "{run}"], ("manifest.json not found",),
         damage={"manifest.json": None}),
    Case("resume-manifest-empty", ["profile", "--resume", "{run}"], ("manifest.json lacks 'schema'", "it is empty"),
         damage={"manifest.json": "{}"}),
    Case("resume-manifest-list", ["profile", "--resume", "{run}"], ("manifest.json is not a deval run manifest",
                                                                    "list"),
         damage={"manifest.json": "[]"}),
    Case("resume-manifest-not-json", ["profile", "--resume", "{run}"], ("manifest.json cannot be read", "damaged"),
         damage={"manifest.json": "{\"schema\": "}),
    Case("resume-manifest-no-config", ["profile", "--resume", "{run}"], ("manifest.json lacks 'config'",),
         damage={"manifest.json": json.dumps({"schema": "deval.manifest/1"})}),
    Case("resume-config-lacks-runs", ["profile", "--resume", "{run}"], ("manifest.json", "lacks 'runs'"),
         damage={"manifest.json": "DROP:runs"}),
    Case("resume-foreign-schema", ["profile", "--resume", "{run}"], ("not a profile run", "deval profile --resume"),
         damage={"manifest.json": json.dumps({"schema": "someone.else/3", "config": {}})}),
    Case("resume-other-runs", ["profile", "--resume", "{run}", "--runs", "5"],
         ("--runs 5.0 differs from the run's config", "runs = 2.0", "drop --runs")),
    Case("resume-other-task", ["profile", "--resume", "{run}", "--task", "flat"],
         ("--task flat differs", "task = coin", "drop --task")),
    Case("resume-other-temperature", ["profile", "--resume", "{run}", "--temperature", "0.7"],
         ("--temperature 0.7 differs", "temperature = 1.0")),
    Case("resume-other-seed", ["profile", "--resume", "{run}", "--seed", "3"], ("--seed 3.0 differs",)),
    Case("resume-other-model", ["profile", "--resume", "{run}", "--model", "e"], ("--model e differs", "model = d")),
    Case("resume-sweep-with-profile-run", ["sweep", "--resume", "{run}"], ("not a sweep run directory",
                                                                            "deval profile --resume")),
    Case("resume-damaged-line", ["profile", "--resume", "{run}"], ("steps.jsonl: line 1 is damaged",
                                                                   "delete that line"),
         damage={"steps.jsonl": "PREPEND:{broken\n"}),
    Case("report-missing", ["report", "{tmp}/none"], ("run directory", "not found")),
    Case("report-summary-empty", ["report", "{run}"], ("summary.json lacks 'schema'", "it is empty"),
         damage={"summary.json": "{}"}),
    Case("report-summary-list", ["report", "{run}"], ("summary.json is not a deval run summary",),
         damage={"summary.json": "[1, 2]"}),
    Case("report-summary-no-tasks", ["report", "{run}"], ("summary.json lacks '", "delete it", "--resume"),
         damage={"summary.json": json.dumps({"schema": "deval.profile/1"})}),
    Case("report-summary-not-json", ["report", "{run}"], ("summary.json cannot be read",),
         damage={"summary.json": "{\"schema"}),
    Case("report-unfinished", ["report", "{run}"], ("has not finished", "deval profile --resume"),
         damage={"summary.json": None}),
    Case("report-manifest-empty", ["report", "{run}"], ("manifest.json lacks 'schema'",),
         damage={"manifest.json": "{}"}),
    Case("report-summary-json-manifest-empty", ["report", "{run}", "--json"], ("manifest.json lacks 'schema'",),
         damage={"manifest.json": "{}"}),
    # keys and environment variables
    Case("key-pasted-as-env-name", ["profile", "--backend", "llama-server", "--model", "m", "--api-key-env", SECRET],
         ("--api-key-env takes the name of an environment variable", "export MY_KEY"), hidden=SECRET[3:]),
    Case("key-pasted-short", ["profile", "--backend", "llama-server", "--model", "m", "--api-key-env", "sk-abc123"],
         ("--api-key-env takes the name",), hidden="abc123"),
    Case("env-name-with-space", ["profile", "--backend", "llama-server", "--model", "m", "--api-key-env", "MY KEY"],
         ("--api-key-env must name an environment variable",)),
    Case("env-name-unset", ["profile", "--backend", "llama-server", "--model", "m", "--api-key-env",
                            "DEVAL_TEST_UNSET_KEY"], ("$DEVAL_TEST_UNSET_KEY", "not set", "export")),
    Case("openai-needs-key", ["profile", "--backend", "openai", "--model", "gpt-4o-mini"],
         ("needs an API key", "$OPENAI_API_KEY"), env={"OPENAI_API_KEY": None, "OPENAI_BASE_URL": None}),
    Case("openai-base-url-env-malformed", ["profile", "--backend", "openai", "--model", "m"],
         ("$OPENAI_BASE_URL", "http://", "fix the variable"), env={"OPENAI_BASE_URL": "localhost:8000/v1"}),
    Case("openai-base-url-env-no-host", ["profile", "--backend", "openai", "--model", "m"],
         ("$OPENAI_BASE_URL", "no host"), env={"OPENAI_BASE_URL": "http:///v1"}),
    Case("openai-base-url-env-port", ["profile", "--backend", "openai", "--model", "m"],
         ("$OPENAI_BASE_URL", "Port out of range"), env={"OPENAI_BASE_URL": "http://127.0.0.1:99999/v1"}),
    Case("probe-timeout-nan", ["probe", "--model", "m", "--timeout", "nan"], ("--timeout must be a finite number",)),
    Case("probe-key-pasted", ["probe", "--model", "m", "--api-key-env", SECRET], ("--api-key-env takes the name",),
         hidden=SECRET[3:]),
    Case("probe-base-url-env", ["probe", "--model", "m"], ("$OPENAI_BASE_URL", "not a valid URL"),
         env={"OPENAI_BASE_URL": "127.0.0.1:8080"}),
    # endpoints
    Case("base-url-scheme", ["profile", "--backend", "llama-server", "--model", "m", "--base-url", "ftp://h/v1"],
         ("--base-url", "http://", "HOST:PORT")),
    Case("base-url-no-host", ["profile", "--backend", "llama-server", "--model", "m", "--base-url", "http:///v1"],
         ("--base-url", "no host")),
    Case("base-url-port", ["profile", "--backend", "llama-server", "--model", "m", "--base-url",
                           "http://127.0.0.1:99999/v1"], ("--base-url", "Port out of range")),
    Case("base-url-space", ["profile", "--backend", "llama-server", "--model", "m", "--base-url", "http://a b/v1"],
         ("--base-url", "whitespace")),
    Case("base-url-secret-not-echoed", ["profile", "--backend", "llama-server", "--model", "m", "--base-url",
                                        "ftp://user:hunter2@h/v1?key=TOPSECRET"], ("--base-url", "***"),
         hidden="TOPSECRET"),
    Case("route", ["profile", "--backend", "llama-server", "--model", "m", "--route", "sideways",
                   "--base-url", "{url:401}"], ("--route must be one of",)),
    Case("openai-needs-model", ["profile", "--backend", "llama-server"], ("needs --model",)),
    Case("endpoint-html", ["profile", "--backend", "llama-server", "--model", "m", "--base-url", "{url:html}",
                           "--no-cache"], ("answered an HTML page", "not an OpenAI-compatible API", "/v1"), code=1),
    Case("endpoint-html-404", ["profile", "--backend", "llama-server", "--model", "m", "--base-url",
                               "{url:html404}", "--no-cache"], ("HTTP 404", "HTML", "not an OpenAI-compatible API"),
         code=1),
    Case("endpoint-401", ["profile", "--backend", "llama-server", "--model", "m", "--base-url", "{url:401}",
                          "--no-cache"], ("authentication failed", "HTTP 401", "$LLAMA_API_KEY"), code=1),
    Case("endpoint-401-with-key", ["profile", "--backend", "llama-server", "--model", "m", "--base-url", "{url:403}",
                                   "--no-cache", "--api-key-env", "DEVAL_TEST_KEY"],
         ("authentication failed", "HTTP 403", "$DEVAL_TEST_KEY holds a valid key"), code=1,
         env={"DEVAL_TEST_KEY": SECRET}, hidden=SECRET[3:]),
    Case("endpoint-refused-connection", ["profile", "--backend", "llama-server", "--model", "m", "--base-url",
                                         "http://127.0.0.1:9/v1", "--no-cache", "--retry-budget", "1"],
         ("cannot connect", "is the server running")),
]


def _damage(run: Path, name: str, text) -> None:
    target = run / name
    if text is None:
        target.unlink()
    elif text.startswith("DROP:"):
        data = json.loads(target.read_text())
        del data["config"][text[5:]]
        target.write_text(json.dumps(data))
    elif text.startswith("PREPEND:"):
        target.write_text(text[8:] + target.read_text())
    else:
        target.write_text(text)


def _fill(arg: str, tmp: Path, run: Path, endpoint) -> str:
    if arg.startswith("{url:"):
        return endpoint(arg[5:-1])
    return arg.replace("{tmp}", str(tmp)).replace("{run}", str(run))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line(case, tmp_path, monkeypatch, capsys, finished, endpoint):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA_API_KEY", "")
    for key, value in case.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    for rel, text in case.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for name, text in case.damage.items():
        _damage(run, name, text)
    args = [_fill(a, tmp_path, run, endpoint) for a in case.args]
    start = time.monotonic()
    code = run_app(app, args)
    took = time.monotonic() - start
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, (code, err)
    assert "Traceback" not in out + err
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ")
    for part in case.says:
        assert part in line, (part, line)
    if case.hidden:
        assert case.hidden not in out + err
    assert took < 15, f"{case.name} took {took:.1f}s: a bad input must fail fast"


def test_table_is_large_and_covers_every_kind():
    kinds = {"option": 0, "task": 0, "out": 0, "resume/report": 0, "key/env": 0, "endpoint": 0}
    for c in CASES:
        text = " ".join(c.args)
        if c.files and "--task" in text or "--tasks-dir" in text:
            kinds["task"] += 1
        elif "--out" in text:
            kinds["out"] += 1
        elif c.damage or "--resume" in text or c.args[0] == "report":
            kinds["resume/report"] += 1
        elif "--api-key-env" in text or c.env:
            kinds["key/env"] += 1
        elif "--base-url" in text:
            kinds["endpoint"] += 1
        else:
            kinds["option"] += 1
    assert len(CASES) >= 80 and all(n >= 4 for n in kinds.values()), kinds


def test_html_and_401_are_not_retried(endpoint, tmp_path, monkeypatch, capsys):
    """One request per route, not minutes of retries: the probe stops at the first HTML page or 401."""
    monkeypatch.chdir(tmp_path)
    for mode in ("html", "401"):
        url = endpoint(mode)
        server = endpoint.servers[mode]
        server.hits.clear()
        assert run_app(app, ["profile", "--backend", "llama-server", "--model", "m", "--base-url", url,
                             "--no-cache"]) == 1
        posts = [h for h in server.hits if not h[0].endswith("/models")]  # the probe's identity GET aside
        assert len(posts) == 1 and len(server.hits) <= 2, server.hits
    capsys.readouterr()


def test_errors_as_a_subprocess_are_one_line_too(tmp_path):
    """The real entry point (rich console, sys.exit): usage error exit 2, runtime failure exit 1, --debug."""
    proc = run_cli("profile", "--runs", "ten", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.strip()] == [
        "error: --runs must be a whole number >= 1 and <= 100000 (got 'ten'); e.g. 10"]
    bad = tmp_path / "t.toml"
    bad.write_text(task_text(weights="[nan, 0.5]"))
    proc = run_cli("profile", *MOCK, "--task", str(bad), "--debug", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "finite" in proc.stderr.splitlines()[-1]


def test_same_second_runs_get_their_own_directories(tmp_path, monkeypatch, capsys):
    """Three profiles started at once, default --out: three directories, each with its own complete run."""
    monkeypatch.chdir(tmp_path)
    import deval.runs.store as store

    monkeypatch.setattr(store.time, "strftime", lambda fmt: "20260101-000000")  # the same second for all
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(run_app(app, ["profile", *MOCK, "--task", "coin",
                                                                          "--runs", "1", "--steps", "2", "--json"])))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    capsys.readouterr()
    assert codes == [0, 0, 0]
    made = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert made == ["20260101-000000-d", "20260101-000000-d-2", "20260101-000000-d-3"]
    for name in made:
        assert (tmp_path / "runs" / name / "summary.json").exists()
