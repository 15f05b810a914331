"""The Countdown verifier: an expression of the given numbers, each used once, that equals the target.

Expressions are evaluated exactly (fractions) by walking their syntax tree, never by eval. Used by the task
(``r1lab.tasks.countdown``), the verifier table (``r1lab.tasks.verifiers``) and the check reader
(``r1lab.tasks.checks``).
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from fractions import Fraction

_MAX_EXPRESSION_CHARS = 256
_EXPRESSION_CHARS = re.compile(r"[0-9+\-*/() ]+")
_AST_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate_countdown_expression(text: str) -> tuple[Fraction, list[int]]:
    """Exact value of an expression of integers and + - * / with parentheses, and the integers it uses.

    Raises ValueError for anything else (names, calls, **, //, unary signs, floats) and ZeroDivisionError.
    Never calls eval: the expression is walked as a syntax tree.
    """
    if len(text) > _MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION_CHARS} characters")
    # The character whitelist rules out names, hex/underscore literals and floats before parsing.
    if not _EXPRESSION_CHARS.fullmatch(text):
        raise ValueError("expression may only contain digits, + - * / ( ) and spaces")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as error:
        raise ValueError(f"not an expression: {error}") from None
    used: list[int] = []

    def value_of(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPERATORS:
            return _AST_OPERATORS[type(node.op)](value_of(node.left), value_of(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"{type(node).__name__} is not allowed")

    return value_of(tree.body), used


def countdown_verifier(answer_text: str, example: dict) -> bool:
    """The expression uses exactly the given numbers (as a multiset) and equals the target."""
    try:
        value, used = evaluate_countdown_expression(answer_text)
    except (ValueError, ZeroDivisionError, RecursionError):
        return False
    return Counter(used) == Counter(example["numbers"]) and value == example["target"]
