"""Test helper: a canonical HumanEval solution with one line changed to return a wrong value."""

import ast



def wrong_return(solution: str, entry_point: str) -> str:
    """Replace the last one-line `return` of the entry point's own body (not nested functions) by `return None`
    (or, where it returned None, by `return object()`, equal to nothing the tests expect)."""
    tree = ast.parse(solution)
    func = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point][-1]
    returns = []
    stack = list(func.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return) and node.lineno == node.end_lineno:
            returns.append(node)
        stack.extend(ast.iter_child_nodes(node))
    target = max(returns, key=lambda r: r.lineno)
    lines = solution.splitlines(keepends=True)
    line = lines[target.lineno - 1]
    indent = line[: len(line) - len(line.lstrip())]
    was_none = target.value is None or (isinstance(target.value, ast.Constant) and target.value.value is None)
    lines[target.lineno - 1] = f"{indent}return {'object()' if was_none else 'None'}\n"
    return "".join(lines)
