"""The "code" verifier: the model's program runs against the example's tests in the sandbox (``r1lab.sandbox``).

An example for the "code" verifier carries its tests in ``"tests"``, in one of two forms:
  asserts     a list of statements (or one string): ``["assert add(1, 2) == 3", "assert add(0, 0) == 0"]`` (MBPP /
              HumanEval style); besides ``assert`` statements, imports and assignments of values that do not call
              the solution (``xs = [3, 1]``);
  stdin/out   pairs, each run in a fresh process with the input on stdin, the output compared token by token:
              ``[{"input": "1 2\\n", "output": "3\\n"}]`` or ``{"inputs": [...], "outputs": [...]}`` (APPS / TACO);
either may also be a JSON string of these. Optional per-example limits: ``"timeout_s"``, ``"memory_mb"``.

The verdict is decided outside the program's process (README, "The code sandbox"), because the program controls
everything inside its own: its memory, its output, its exit status, what its objects' ``==`` says.
  stdin/out   the caller compares the program's stdout with the expected output, which never enters the sandbox;
  asserts     each assert is split, when the tests are read, into the calls into the solution (``add(1, 2)``; a
              method of an instance of its class, ``Solution().two_sum(xs, 9)``; a function of it passed to a
              builtin, ``list(map(square, xs))``) and the rest of its condition, which includes any method of a value
              the solution returned (``word(3).startswith("ab")``). The program's sandbox evaluates only those
              calls, after the solution, and sends back their values as plain data (None, bool, int, float, str,
              bytes, complex and lists, tuples, sets, dicts of them; anything else, e.g. an object whose ``__eq__``
              always says yes, is a failure). The caller decodes them into objects it builds itself and evaluates the
              condition: ``value == <literal>`` and plain truth directly, anything else (``math.isclose(value, 2.5)``,
              ``sorted(value) == sorted([...])``) in a second sandbox that runs only the test's own code, never the
              program's. The expected side never reaches the program: forging the output passes only with the
              expected values themselves, which is solving. A program that exits or fails before the calls fails.
Tests the judge cannot split are refused with ValueError when the tests are read (`parse_tests`): a call into the
solution that uses a comprehension's or lambda's variable (``all(f(x) for x in xs)``: write one assert per input),
an assert that never calls the solution, function definitions and other statements. Changed from running the
asserts inside the program's interpreter: a value the judge cannot carry (a generator, a numpy array, an instance of
the program's class; a numpy scalar is carried as its Python number) is now a failure, and the forms above are
refused instead of run.

A program passes when every test passes. Program text: the last fenced code block (```python … ```), else the whole
answer. The "code" reward (``r1lab.rewards.code``) runs the same tests.
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import json
import math
import re
from dataclasses import dataclass

from r1lab.sandbox import SandboxLimits, SandboxResult, run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py"}
_BUILTIN_NAMES = frozenset(dir(builtins))
# A call into the solution wrapped in one of these (first argument) is materialised inside the program's sandbox:
# the value of `list(map(f, xs))` is plain data, the map object is not. They carry no expected value in.
_MATERIALISERS = frozenset({"list", "tuple", "set", "frozenset", "sorted", "dict"})
# Builtins that call a function of the solution given to them and return data (never a verdict)
_HIGHER_ORDER = frozenset({"map", "filter", "sorted", "min", "max"})
_VALUE_NAME = "_r1lab_value_"  # the judge's name for the value of the i-th call into the solution
_MAX_DEPTH = 100  # nesting of plain data the judge carries (deeper, or cyclic, is a failure)


@dataclass
class CodeTestResult:
    passed: int  # tests passed (asserts count as one test: they run together)
    total: int
    detail: str  # why the first failure failed ("" when all passed)

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


@dataclass(frozen=True)
class AssertCheck:
    source: str  # the assert as written
    condition: str  # its condition with the i-th call into the solution replaced by the name _r1lab_value_<i>
    calls: tuple[int, ...]  # the indices (into AssertPlan.calls) of the values the condition reads
    kind: str  # "equals" (value == literal), "truthy", "falsy": decided by the caller; "judge": by the judge sandbox
    literal: object = None  # the expected value of an "equals" check


@dataclass(frozen=True)
class AssertPlan:
    calls: tuple[str, ...]  # expressions the program's sandbox evaluates after the solution, in order
    program_setup: tuple[str, ...]  # imports, and the assignments those calls read, run after the solution
    judge_setup: tuple[str, ...]  # every import and assignment of the tests, for the judge sandbox
    checks: tuple[AssertCheck, ...]


# --- plain data: the only thing that leaves the program's sandbox ---


def encode_plain(value, depth: int = 0):
    """``value`` as JSON-ready data, exact builtin types only (a subclass of int is not an int); TypeError otherwise.

    Lists are JSON arrays; tuples, sets, frozensets, dicts (any plain keys), bytes, complex numbers and non-finite
    floats are one-key objects tagged with their type. A numpy scalar is carried as its Python number. This source
    also runs inside the program's sandbox, where the program may replace it: the caller trusts only
    `decode_plain` of what comes back.
    """
    if depth > _MAX_DEPTH:
        raise ValueError("plain data nested too deeply (or cyclic)")
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind is list:
        return [encode_plain(item, depth + 1) for item in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode_plain(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[encode_plain(key, depth + 1), encode_plain(item, depth + 1)] for key, item in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [encode_plain(value.real), encode_plain(value.imag)]}
    raise TypeError(f"a {kind.__name__} is not plain data (None, bool, int, float, str, bytes, complex, list, tuple, "
                    "set, dict)")


def decode_plain(data, depth: int = 0):
    """The object `encode_plain` encoded, built from builtin types only; ValueError for anything else."""
    if depth > _MAX_DEPTH:
        raise ValueError("plain data nested too deeply")
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if kind is list:
        return [decode_plain(item, depth + 1) for item in data]
    if kind is dict and len(data) == 1:
        (tag, items), = data.items()
        containers = {"tuple": tuple, "set": set, "frozenset": frozenset}
        if tag in containers and type(items) is list:
            return containers[tag](decode_plain(item, depth + 1) for item in items)
        if tag == "dict" and type(items) is list and all(type(pair) is list and len(pair) == 2 for pair in items):
            return {decode_plain(key, depth + 1): decode_plain(item, depth + 1) for key, item in items}
        if tag == "float" and items in ("nan", "inf", "-inf"):
            return float(items)
        if tag == "bytes" and type(items) is str:
            return bytes.fromhex(items)
        if tag == "complex" and type(items) is list and len(items) == 2 \
                and all(type(part) in (int, float) for part in items):
            return complex(*items)
    raise ValueError(f"not an encoding of plain data: {str(data)[:80]}")


_CODEC_SOURCE = "\n\n".join(inspect.getsource(function) for function in (encode_plain, decode_plain))
_HARNESS_HEADER = f"import json, math, os, sys\n_MAX_DEPTH = {_MAX_DEPTH}\n\n{_CODEC_SOURCE}\n"

# Runs in the program's sandbox: the solution, then the calls; the values go to the original stdout, the program's
# own prints to stderr. Nothing here is trusted: the program may rewrite all of it, it cannot know what to write.
_PROGRAM_HARNESS = _HARNESS_HEADER + '''

def _describe(error):
    try:
        return (type(error).__name__ + ": " + str(error))[:300]
    except BaseException:
        return type(error).__name__


def _evaluate_calls():
    with open("calls.json") as file:
        plan = json.load(file)
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        with open("solution.py") as file:
            exec(compile(file.read(), "solution.py", "exec"), namespace)
        for statement in plan["setup"]:
            exec(statement, namespace)
    except BaseException as error:
        channel.write(json.dumps({"error": "the program stopped before the tests: " + _describe(error)}))
        channel.flush()
        return
    results = []
    for call in plan["calls"]:
        try:
            results.append({"value": encode_plain(eval(call, namespace))})
        except BaseException as error:
            results.append({"error": _describe(error)})
    channel.write(json.dumps(results))
    channel.flush()


_evaluate_calls()
'''

# Runs in a sandbox of its own with the test's code and the decoded values only: its verdicts are trusted.
_JUDGE_HARNESS = _HARNESS_HEADER + '''
with open("judge.json") as file:
    plan = json.load(file)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
for statement in plan["setup"]:
    exec(statement, namespace)
verdicts = []
for condition, values in plan["checks"]:
    scope = dict(namespace)
    try:
        scope.update({name: decode_plain(value) for name, value in values.items()})
        verdicts.append(bool(eval(condition, scope)))
    except Exception:
        verdicts.append(False)
print(json.dumps(verdicts))
'''


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
    """(assert statements, (stdin, expected stdout) pairs) of an example; ValueError when it has none, or when the
    judge cannot split its asserts (see the module docstring)."""
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
    if asserts:
        plan_asserts(tuple(asserts))
    return asserts, pairs


def _as_text(value) -> str:
    return "\n".join(map(str, value)) + "\n" if isinstance(value, list) else str(value)


def _loads_and_bindings(node: ast.AST) -> tuple[set[str], set[str]]:
    """Names ``node`` reads, and names bound inside it (comprehension and lambda variables, := targets)."""
    loads, bound = set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            (loads if isinstance(sub.ctx, ast.Load) else bound).add(sub.id)
        elif isinstance(sub, ast.arg):
            bound.add(sub.arg)
    return loads, bound


def _call_root(name: ast.Name, parents: dict, plain_builtins: set[str]) -> ast.AST:
    """The largest expression around a name of the solution that the program's sandbox evaluates (module docstring).

    It grows through calls of what the solution defines (``f(x)``, ``f(x)(y)``), attributes of the solution's own
    names and of an instance of its class (``Solution().two_sum``), builtins that call a function passed to them
    (``map(f, xs)``) and builtins that materialise an iterable (``list(...)``). It stops at a method of a value the
    solution returned: ``f(x).startswith("ab")`` is judged outside, or the program's object would decide it.
    """
    node, calls = name, 0
    while True:
        parent = parents.get(node)
        if isinstance(parent, ast.Call) and parent.func is node:
            node, calls = parent, calls + 1
        elif isinstance(parent, ast.Attribute) and parent.value is node and (calls == 0 or (
                calls == 1 and isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id[:1].isupper())):
            node = parent
        elif (calls == 0 and isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name)
              and parent.func.id in _HIGHER_ORDER and parent.func.id in plain_builtins
              and (any(arg is node for arg in parent.args) or any(k.value is node for k in parent.keywords))):
            node, calls = parent, 1
        elif (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id in _MATERIALISERS
              and parent.func.id in plain_builtins and parent.args and parent.args[0] is node):
            node = parent
        else:
            return node


class _ReplaceCalls(ast.NodeTransformer):
    def __init__(self, names: dict[int, str]):
        self.names = names  # id(node) -> value name

    def visit(self, node):
        if id(node) in self.names:
            return ast.copy_location(ast.Name(id=self.names[id(node)], ctx=ast.Load()), node)
        return super().visit(node)


def _check_kind(condition: ast.expr) -> tuple[str, object]:
    def is_value(node):
        return isinstance(node, ast.Name) and node.id.startswith(_VALUE_NAME)

    if is_value(condition):
        return "truthy", None
    if isinstance(condition, ast.UnaryOp) and isinstance(condition.op, ast.Not) and is_value(condition.operand):
        return "falsy", None
    if isinstance(condition, ast.Compare) and len(condition.ops) == 1 and isinstance(condition.ops[0], ast.Eq):
        left, right = condition.left, condition.comparators[0]
        for value_side, literal_side in ((left, right), (right, left)):
            if is_value(value_side):
                try:
                    return "equals", ast.literal_eval(literal_side)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    pass
    return "judge", None


@functools.lru_cache(maxsize=4096)
def plan_asserts(statements: tuple[str, ...]) -> AssertPlan:
    """Split assert-style tests into calls into the solution and conditions the caller checks (module docstring)."""
    text = "\n".join(statements)
    try:
        module = ast.parse(text)
    except SyntaxError as error:
        raise ValueError(f"the tests are not valid Python: {error}") from None
    setup: list[tuple[ast.stmt, set[str], set[str]]] = []  # statement, names it binds, names it reads
    setup_names: set[str] = set()
    asserts: list[ast.Assert] = []
    for statement in module.body:
        source = ast.get_source_segment(text, statement) or ast.unparse(statement)
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            bound = {(alias.asname or alias.name).split(".")[0] for alias in statement.names}
            setup.append((statement, bound, set()))
            setup_names |= bound
        elif isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
            loads, _ = _loads_and_bindings(statement.value)
            unknown = loads - _BUILTIN_NAMES - setup_names
            if unknown:
                raise ValueError(f"test statement {source!r} reads {', '.join(sorted(unknown))}: assignments in "
                                 "tests may hold values only; call the solution inside an assert")
            bound = {t.id for t in statement.targets}
            setup.append((statement, bound, loads))
            setup_names |= bound
        elif isinstance(statement, ast.Assert):
            asserts.append(statement)
        elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring or a stray string
        else:
            raise ValueError(f"test statement {source!r} is not supported: tests are assert statements that call the "
                             "solution, plus imports and assignments of values (r1lab.tasks.verifiers_code)")
    if not asserts:
        raise ValueError("the tests have no assert statement")
    calls: list[str] = []
    call_nodes: list[ast.AST] = []
    checks: list[AssertCheck] = []
    for statement in asserts:
        source = ast.get_source_segment(text, statement) or ast.unparse(statement)
        loads, bound_in_test = _loads_and_bindings(statement.test)
        solution_names = loads - _BUILTIN_NAMES - setup_names - bound_in_test
        if not solution_names:
            raise ValueError(f"test {source!r} does not call the solution (every name in it is a builtin or bound "
                             "by the tests)")
        plain_builtins = _BUILTIN_NAMES - setup_names - bound_in_test
        parents = {child: parent for parent in ast.walk(statement.test) for child in ast.iter_child_nodes(parent)}
        roots = {}
        for node in ast.walk(statement.test):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in solution_names:
                root = _call_root(node, parents, plain_builtins)
                roots[id(root)] = root
        outermost = []
        for root in roots.values():
            ancestor, nested = parents.get(root), False
            while ancestor is not None:
                nested = nested or id(ancestor) in roots
                ancestor = parents.get(ancestor)
            if not nested:
                outermost.append(root)
        outermost.sort(key=lambda node: (node.lineno, node.col_offset))
        names = {}
        for root in outermost:
            root_loads, root_bound = _loads_and_bindings(root)
            escaped = (root_loads - root_bound) & bound_in_test
            call = ast.unparse(root)
            if escaped:
                raise ValueError(f"test {source!r}: the call {call!r} reads {', '.join(sorted(escaped))}, a "
                                 "variable of the test's own comprehension or lambda; the judge evaluates calls into "
                                 "the solution on their own, so write one assert per input")
            names[id(root)] = f"{_VALUE_NAME}{len(calls)}"
            calls.append(call)
            call_nodes.append(root)
        condition = _ReplaceCalls(names).visit(statement.test)
        kind, literal = _check_kind(condition)
        checks.append(AssertCheck(source=source, condition=ast.unparse(condition),
                                  calls=tuple(int(n[len(_VALUE_NAME):]) for n in names.values()), kind=kind,
                                  literal=literal))
    # The program's sandbox gets the imports and only the assignments its calls read (an `expected = ...` stays out)
    needed = set().union(*(_loads_and_bindings(node)[0] for node in call_nodes))
    for statement, bound, reads in reversed(setup):
        if isinstance(statement, ast.Assign) and bound & needed:
            needed |= reads
    program_setup = tuple(ast.unparse(statement) for statement, bound, _ in setup
                          if not isinstance(statement, ast.Assign) or bound & needed)
    return AssertPlan(calls=tuple(calls), program_setup=program_setup,
                      judge_setup=tuple(ast.unparse(statement) for statement, _, _ in setup), checks=tuple(checks))


def _limits(example: dict, base: SandboxLimits | None) -> SandboxLimits:
    limits = base or SandboxLimits()
    overrides = {key: example[key] for key in ("timeout_s", "memory_mb") if example.get(key) is not None}
    return SandboxLimits(**{**limits.__dict__, **overrides}) if overrides else limits


def _why(result: SandboxResult, default: str) -> str:
    return "timed out" if result.timed_out else (result.stderr.strip().splitlines() or [default])[-1]


def _returned_values(result: SandboxResult, count: int) -> tuple[list, str]:
    """The values the program's sandbox sent back, each ("value", object) or ("error", text); else why there are none.

    Everything here is untrusted text: it is parsed as JSON and decoded into builtin objects only."""
    if result.timed_out:
        return [], "timed out"
    try:
        reply = json.loads(result.stdout)
    except (ValueError, RecursionError):
        return [], f"no readable values came back (exit status {result.returncode}: did it exit before the tests?)"
    if isinstance(reply, dict) and isinstance(reply.get("error"), str):
        return [], reply["error"]
    if not isinstance(reply, list) or len(reply) != count:
        return [], "the values that came back are malformed"
    values = []
    for item in reply:
        try:
            if isinstance(item, dict) and set(item) == {"value"}:
                values.append(("value", decode_plain(item["value"])))
            elif isinstance(item, dict) and set(item) == {"error"}:
                values.append(("error", str(item["error"])[:300]))
            else:
                return [], "the values that came back are malformed"
        except (ValueError, TypeError, RecursionError, OverflowError) as error:
            values.append(("error", f"not plain data: {error}"))
    return values, ""


def _judge(plan: AssertPlan, values: list, limits: SandboxLimits) -> str:
    """"" when every assert holds for these values, else why the first one fails."""
    failed: dict[int, str] = {}
    remote: list[int] = []
    for index, check in enumerate(plan.checks):
        errors = [values[i][1] for i in check.calls if values[i][0] == "error"]
        if errors:
            failed[index] = errors[0]
            continue
        first = values[check.calls[0]][1] if check.calls else None
        if check.kind == "equals" and not first == check.literal:  # both built here from plain data
            failed[index] = f"got {repr(first)[:100]}"
        elif check.kind == "truthy" and not first:
            failed[index] = f"got {repr(first)[:100]}"
        elif check.kind == "falsy" and first:
            failed[index] = f"got {repr(first)[:100]}"
        elif check.kind == "judge":
            remote.append(index)
    if remote:
        # Re-encoded from the objects decoded here: the judge sandbox gets plain data, never the program's text
        checks = [[plan.checks[i].condition, {f"{_VALUE_NAME}{c}": encode_plain(values[c][1])
                                              for c in plan.checks[i].calls}] for i in remote]
        result = run_python(_JUDGE_HARNESS, limits=limits, files={
            "judge.json": json.dumps({"setup": list(plan.judge_setup), "checks": checks})})
        try:
            verdicts = json.loads(result.stdout) if result.ok else None
        except ValueError:
            verdicts = None
        if not (isinstance(verdicts, list) and len(verdicts) == len(remote)):
            verdicts = [False] * len(remote)
            why = f"the judge failed: {_why(result, 'no verdict')}"
        else:
            why = "the condition is false for the values returned"
        for index, verdict in zip(remote, verdicts):
            if verdict is not True:
                failed[index] = why
    if not failed:
        return ""
    first = min(failed)
    return f"{plan.checks[first].source}: {failed[first]}"


def run_tests(program: str, example: dict, limits: SandboxLimits | None = None) -> CodeTestResult:
    """Run ``program`` against the example's tests; stops at the first failing stdin/stdout pair."""
    asserts, pairs = parse_tests(example)
    limits = _limits(example, limits)
    total = (1 if asserts else 0) + len(pairs)
    passed = 0
    if asserts:
        plan = plan_asserts(tuple(asserts))
        result = run_python(_PROGRAM_HARNESS, limits=limits, files={
            "solution.py": program, "calls.json": json.dumps({"setup": list(plan.program_setup),
                                                              "calls": list(plan.calls)})})
        values, why = _returned_values(result, len(plan.calls))
        if not why:
            why = _judge(plan, values, limits)
        if why:
            return CodeTestResult(passed, total, f"asserts: {why}")
        passed += 1
    for index, (stdin, expected) in enumerate(pairs):
        result = run_python(program, stdin=stdin, limits=limits)
        if result.timed_out or result.returncode != 0:
            return CodeTestResult(passed, total, f"test {index}: {_why(result, 'error')}")
        if result.stdout.split() != expected.split():  # token by token: spacing and line ends do not matter
            return CodeTestResult(passed, total, f"test {index}: wrong output")
        passed += 1
    return CodeTestResult(passed, total, "")


def code_verifier(answer_text: str, example: dict) -> bool:
    """The program in the answer (fenced block or plain) passes every test of the example."""
    parse_tests(example)  # a malformed example is an error, not a wrong answer
    program = extract_program(answer_text)
    return program is not None and run_tests(program, example).all_passed
