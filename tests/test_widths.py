"""No request field travels loose: the contract's and the services' functions take at most 7 parameters.

A request is one object (app.core.spec), so a new request field widens no signature. The route handlers are
left out: FastAPI reads their parameters as the request's path, query, body and dependencies."""

import ast

from test_boundaries import REPO

MAX_PARAMETERS = 7


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Its parameters, keyword-only ones included, without `self` or `cls`."""
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return names[1:] if names and names[0] in ("self", "cls") else names


def is_route(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and ast.unparse(d.func.value) == "router"
        for d in node.decorator_list
    )


def wide_functions(package: str) -> list[str]:
    found = []
    for file in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if function and not is_route(node) and len(parameters(node)) > MAX_PARAMETERS:
                found.append(f"{file.relative_to(REPO)}::{node.name} ({len(parameters(node))})")
    return found


def test_no_function_of_app_or_worker_takes_more_than_seven_parameters():
    assert wide_functions("app") + wide_functions("worker") == []


def test_the_count_sees_keyword_only_parameters_and_not_self():
    source = "class C:\n    def f(self, a, b, c, d, e, f, g, *, h): ...\n    def g(self, a, b, c, d, e, f, g): ...\n"
    widths = {n.name: len(parameters(n)) for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert widths == {"f": 8, "g": 7}
