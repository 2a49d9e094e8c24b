"""calc: arithmetic for agents, without eval.

The expression is parsed with `ast` and walked over a whitelist: numbers, + - * / // % **,
parentheses, a few math functions and constants. Anything else (names, attributes, calls to
other functions, comprehensions) is refused. Sizes are bounded so that `9**9**9` is an error,
not a CPU burnt for minutes.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any, Callable

from llmos.syscalls.tools import tool

MAX_INT_BITS = 4096  # an integer result or operand beyond this is refused
MAX_EXPONENT = 10_000

BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max,
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "floor": math.floor, "ceil": math.ceil, "factorial": math.factorial, "hypot": math.hypot,
}  # fmt: skip
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


class CalcError(ValueError):
    pass


@tool("calc", timeout=2.0)
def calc(expression: str) -> int | float:
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"not an arithmetic expression: {exc.msg}") from None
    except RecursionError:
        raise CalcError("expression is nested too deeply") from None
    try:
        return evaluate(tree.body)
    except RecursionError:
        raise CalcError("expression is nested too deeply") from None


def evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _checked(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](evaluate(node.operand))
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords:
        args = [evaluate(a) for a in node.args]
        if node.func.id == "factorial" and (not args or not isinstance(args[0], int) or args[0] > 1000):
            raise CalcError("factorial takes one integer up to 1000")
        return _checked(FUNCTIONS[node.func.id](*args))
    raise CalcError(f"not allowed in an expression: {ast.unparse(node)[:80]!r}")


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalcError(f"exponent {exponent} is too large")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and base not in (-1, 0, 1):
        if exponent * abs(base).bit_length() > MAX_INT_BITS:
            raise CalcError("result would be too large")


def _checked(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalcError(f"not a number: {value!r}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalcError("result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalcError(f"result is not finite ({value})")
    return value
