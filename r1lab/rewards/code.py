"""The "code" reward: the completion's program runs against the example's tests in the sandbox.

The tests, their formats and the judge, which decides outside the program's process, belong to the "code" verifier
(``r1lab.tasks.verifiers_code``); this reward differs only in where it finds the program: the last fenced Python
block anywhere in the completion (also in the reasoning), else the content of the answer tags. Where the sandbox has
no bwrap and the weak guard was not chosen, it raises `r1lab.sandbox.SandboxUnavailable` rather than score: call
`r1lab.sandbox.sandbox_isolation()` at the start of a run to fail there (README, "The code sandbox").
"""

from __future__ import annotations

from r1lab.rewards.registry import register_reward
from r1lab.tasks.verifiers import extract_answer
# The test runner's names stay importable from here (they lived here before the "code" verifier moved to the tasks).
from r1lab.tasks.verifiers_code import (CodeTestResult, code_verifier, extract_program, parse_tests, python_blocks,
                                        run_tests)

__all__ = ["CodeTestResult", "code_reward", "code_verifier", "extract_program", "parse_tests", "run_tests"]


@register_reward("code")
def code_reward(completion: str, example: dict) -> float | None:
    """1.0 when the completion's program passes every test, else 0.0; None for examples without tests.

    The program is the last fenced Python block anywhere in the completion, else the content of the answer tags.
    """
    if example.get("tests") is None:
        return None
    blocks = python_blocks(completion)
    program = blocks[-1].strip("\n") if blocks else extract_program(extract_answer(completion))
    return 1.0 if program is not None and run_tests(program, example).all_passed else 0.0
