"""The "code" verifier: the model's program runs against the example's tests in the sandbox (``r1lab.sandbox``).

An example for the "code" verifier carries its tests in ``"tests"``, in one of two forms:
  asserts     a list of statements (or one string) run after the program in the same interpreter:
              ``["assert add(1, 2) == 3", "assert add(0, 0) == 0"]`` (MBPP / HumanEval style);
  stdin/out   pairs, each run in a fresh process with the input on stdin, the output compared token by token:
              ``[{"input": "1 2\\n", "output": "3\\n"}]`` or ``{"inputs": [...], "outputs": [...]}`` (APPS / TACO);
either may also be a JSON string of these. Optional per-example limits: ``"timeout_s"``, ``"memory_mb"``.

A program passes when every test passes. With asserts, passing also requires that the run reached its end: a
program that calls ``sys.exit(0)`` or ``os._exit(0)`` before the asserts (a known reward hack) fails. Program text:
the last fenced code block (```python … ```), else the whole answer. The "code" reward (``r1lab.rewards.code``)
runs the same tests.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from r1lab.sandbox import SandboxLimits, run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py"}

# The program that runs the solution, then the asserts, then prints a marker only this runner knows (it reads the
# marker file and deletes it before the solution starts). Exit status 0 without the marker is a failure.
_ASSERT_RUNNER = """\
def _run():  # the marker lives in this frame, not in a namespace the solution sees
    import os, sys
    with open(".marker") as file:
        marker = file.read()
    os.remove(".marker")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for name in ("solution.py", "tests.py"):
        with open(name) as file:
            exec(compile(file.read(), name, "exec"), namespace)
    sys.stdout.flush()
    print(marker)
_run()
"""


@dataclass
class CodeTestResult:
    passed: int  # tests passed (asserts count as one test: they run together)
    total: int
    detail: str  # why the first failure failed ("" when all passed)

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced Python blocks of ``text`` (```python, ```py, ```python3 or untagged), in order."""
    return [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]


def extract_program(text: str | None) -> str | None:
    """The last fenced Python block of ``text`` (untagged fences count), else the stripped text; None if empty."""
    if text is None:
        return None
    blocks = python_blocks(text)
    program = blocks[-1] if blocks else text
    return program.strip("\n") if program.strip() else None


def parse_tests(example: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """(assert statements, (stdin, expected stdout) pairs) of an example; ValueError when it has none."""
    tests = example.get("tests")
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            tests = [tests]  # one string of assert statements
    asserts: list[str] = []
    pairs: list[tuple[str, str]] = []
    if isinstance(tests, dict):
        if "inputs" not in tests or "outputs" not in tests or len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError("'tests' as a mapping needs 'inputs' and 'outputs' lists of equal length")
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if not isinstance(tests, list):
        raise ValueError(f"example has no 'tests' list (got {type(tests).__name__}); see r1lab.tasks.verifiers_code")
    for test in tests:
        if isinstance(test, str):
            asserts.append(test)
        elif isinstance(test, dict) and "input" in test and "output" in test:
            pairs.append((_as_text(test["input"]), _as_text(test["output"])))
        else:
            raise ValueError(f"a test must be an assert string or {{'input', 'output'}}, got {test!r}")
    if not asserts and not pairs:
        raise ValueError("example has an empty 'tests' list")
    return asserts, pairs


def _as_text(value) -> str:
    return "\n".join(map(str, value)) + "\n" if isinstance(value, list) else str(value)


def _limits(example: dict, base: SandboxLimits | None) -> SandboxLimits:
    limits = base or SandboxLimits()
    overrides = {key: example[key] for key in ("timeout_s", "memory_mb") if example.get(key) is not None}
    return SandboxLimits(**{**limits.__dict__, **overrides}) if overrides else limits


def run_tests(program: str, example: dict, limits: SandboxLimits | None = None) -> CodeTestResult:
    """Run ``program`` against the example's tests; stops at the first failing stdin/stdout pair."""
    asserts, pairs = parse_tests(example)
    limits = _limits(example, limits)
    total = (1 if asserts else 0) + len(pairs)
    passed = 0
    if asserts:
        marker = secrets.token_hex(16)
        result = run_python(_ASSERT_RUNNER, limits=limits,
                            files={"solution.py": program, "tests.py": "\n".join(asserts) + "\n", ".marker": marker})
        if not (result.ok and result.stdout.rstrip().endswith(marker)):
            why = "timed out" if result.timed_out else (result.stderr.strip().splitlines() or ["exited early"])[-1]
            return CodeTestResult(passed, total, f"asserts: {why}")
        passed += 1
    for index, (stdin, expected) in enumerate(pairs):
        result = run_python(program, stdin=stdin, limits=limits)
        if result.timed_out or result.returncode != 0:
            why = "timed out" if result.timed_out else (result.stderr.strip().splitlines() or ["error"])[-1]
            return CodeTestResult(passed, total, f"test {index}: {why}")
        if result.stdout.split() != expected.split():  # token by token: spacing and line ends do not matter
            return CodeTestResult(passed, total, f"test {index}: wrong output")
        passed += 1
    return CodeTestResult(passed, total, "")


def code_verifier(answer_text: str, example: dict) -> bool:
    """The program in the answer (fenced block or plain) passes every test of the example."""
    parse_tests(example)  # a malformed example is an error, not a wrong answer
    program = extract_program(answer_text)
    return program is not None and run_tests(program, example).all_passed
