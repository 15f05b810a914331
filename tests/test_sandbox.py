"""The code sandbox: bwrap isolation, its refusal without bwrap, the weak opt-in; the "code" verifier/reward and its
judge outside the program (README, "The code sandbox"). Hostile programs: test_sandbox_hostile.py."""

import os
import subprocess
import sys

import pytest

import r1lab.sandbox as sandbox_module
from r1lab.rewards import code_reward
from r1lab.sandbox import SandboxLimits, SandboxUnavailable, bwrap_available, run_python, sandbox_isolation
from r1lab.tasks import verify
from r1lab.tasks.verifiers_code import (decode_plain, encode_plain, extract_program, parse_tests, plan_asserts,
                                        run_tests)

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap (bwrap) is not installed or cannot create "
                                 "a sandbox here: `apt-get install bubblewrap` (CI installs it)")
BWRAP = SandboxLimits(timeout_s=3.0, isolation="bwrap")  # a run takes ~0.1 s idle
WEAK = SandboxLimits(timeout_s=3.0, isolation="weak")


@pytest.fixture
def default_isolation(monkeypatch):
    """The examples of the verifier carry no isolation: make the default bwrap whatever the caller's environment."""
    monkeypatch.delenv("R1LAB_SANDBOX", raising=False)


# --- bwrap: what the program sees ---


@needs_bwrap
def test_a_program_runs_with_its_stdin_and_files_in_a_clean_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_the_program")
    program = ("import os, sys\nprint(int(input()) * 2)\nprint(sorted(os.environ))\nprint(os.getcwd(), os.getuid())\n"
               "open('given.txt', 'a').write('+')\nprint(open('given.txt').read())\n"
               "open_fds = []\nfor fd in range(3, 256):\n    try:\n        os.fstat(fd)\n        open_fds.append(fd)\n"
               "    except OSError:\n        pass\nprint(open_fds)")
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.dup2(leaked, 40)  # inheritable: a careless launcher would pass it on
    try:
        result = run_python(program, stdin="21\n", limits=BWRAP, files={"given.txt": "data"})
    finally:
        os.close(40)
        os.close(leaked)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "42"
    assert lines[1] == str(sorted(["HOME", "LANG", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                   "PATH", "PWD", "TMPDIR"]))  # PWD: set by bwrap
    assert lines[2] == "/sandbox 65534"
    assert lines[3] == "data+"  # the given files belong to the program's user
    assert lines[4] == "[]"  # no descriptor but stdin, stdout and stderr
    assert result.isolation.startswith("bwrap: uid 65534") and "rlimits" in result.isolation


@needs_bwrap
def test_stdin_is_closed_when_not_given():
    result = run_python("input()", limits=BWRAP)
    assert result.returncode != 0 and "EOFError" in result.stderr


@needs_bwrap
def test_the_program_sees_a_read_only_system_and_nothing_else_of_the_host(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    readme = os.path.abspath("README.md")
    program = f"""
import os
print(sorted(os.listdir("/")))
for path in ({str(secret)!r}, {readme!r}, "/etc/shadow", "/etc/passwd", "/sys/kernel", "/home", "/tmp"):
    print(path, os.path.exists(path))
for path in ("/usr/x", "/etc/x", "/x", "/proc/x"):
    try:
        open(path, "w")
        print("wrote", path)
    except OSError as error:
        print("refused", path, type(error).__name__)
print("devices", sorted(os.listdir("/dev")))
"""
    result = run_python(program, limits=BWRAP)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    top = set(eval(lines[0]))
    assert top <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "sandbox",
                   ".r1lab-inputs"} | {path.split("/")[1] for path in (sys.prefix, sys.base_prefix)}
    assert {"home", "tmp", "sys", "var", "run", "mnt"}.isdisjoint(top) or sys.prefix.startswith(("/home", "/tmp"))
    # /home or /tmp exist inside only as the parents of a bound interpreter (a venv under /tmp, e.g. a CI clone)
    prefixes = (sys.prefix, sys.base_prefix)
    for line in lines[1:8]:
        path, seen = line.rsplit(" ", 1)
        if path in ("/home", "/tmp") and any(prefix.startswith(path + "/") for prefix in prefixes):
            continue
        assert seen == "False", lines[1:8]
    assert not any(line.startswith("wrote") for line in lines), result.stdout
    devices = set(eval(lines[-1].split(" ", 1)[1]))
    assert devices <= {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd", "stdin",
                       "stdout", "stderr", "core"}  # no disk, no /dev/mem, no kmsg


@needs_bwrap
def test_big_files_a_full_working_directory_and_floods_of_output_are_capped():
    result = run_python("open('big', 'wb').write(b'x' * 5_000_000)",
                        limits=SandboxLimits(timeout_s=3, file_size_mb=1, isolation="bwrap"))
    assert not result.ok  # RLIMIT_FSIZE: the write fails (SIGXFSZ or an OSError)
    many = run_python("n = 0\ntry:\n    while True:\n        open(f'f{n}', 'wb').write(b'x' * 500_000)\n"
                      "        n += 1\nexcept OSError as error:\n    print(n, error.errno)",
                      limits=SandboxLimits(timeout_s=3, disk_mb=4, isolation="bwrap"))
    assert many.ok, many.stderr
    written, errno = map(int, many.stdout.split())
    assert written <= 8 and errno == 28  # ENOSPC: the tmpfs is capped, host memory is not filled
    flood = run_python("import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 10000)",
                       limits=SandboxLimits(timeout_s=3, max_output_bytes=1000, isolation="bwrap"))
    assert flood.ok and len(flood.stdout) == 1000


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="the switch to nobody outside happens only when started as root")
def test_an_interpreter_nobody_cannot_read_runs_in_a_user_namespace_that_says_so(tmp_path):
    venv = tmp_path / "private-venv"
    base_python = os.path.join(sys.base_prefix, "bin", "python3")
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    venv.chmod(0o700)
    limits = SandboxLimits(timeout_s=3.0, isolation="bwrap", python=str(venv / "bin" / "python"))
    assert "root outside: the process limit is not enforced" in sandbox_isolation(limits)
    result = run_python("import os, sys\nprint(os.getuid(), sys.prefix)", limits=limits)
    assert result.ok and result.stdout.split() == ["65534", str(venv)], result.stderr


@needs_bwrap
def test_sandbox_isolation_names_bwrap_and_the_user(default_isolation):
    line = sandbox_isolation()
    assert line.startswith("bwrap: uid 65534") and "pid/net/ipc/uts/mount namespaces" in line
    assert "\n" not in line


# --- without bwrap: refuse, unless the weak guard is chosen explicitly ---


def test_without_bwrap_the_sandbox_refuses_and_names_both_fixes(monkeypatch, default_isolation):
    monkeypatch.setattr(sandbox_module, "_find_bwrap", lambda: None)
    for attempt in (lambda: run_python("print(1)", limits=SandboxLimits(timeout_s=3)), sandbox_isolation,
                    lambda: code_reward(ADD_COMPLETION, ADD_ASSERTS)):
        with pytest.raises(SandboxUnavailable) as refusal:
            attempt()
        message = str(refusal.value)
        assert "apt-get install bubblewrap" in message
        assert "R1LAB_SANDBOX=weak" in message and "SandboxLimits(isolation='weak')" in message


def test_a_bwrap_that_cannot_sandbox_is_refused_too(monkeypatch, default_isolation):
    monkeypatch.setattr(sandbox_module, "_find_bwrap", lambda: "/bin/false")  # fails its self-test
    with pytest.raises(SandboxUnavailable, match="cannot create a sandbox.*R1LAB_SANDBOX=weak"):
        run_python("print(1)", limits=SandboxLimits(timeout_s=3))


def test_the_weak_guard_runs_only_when_chosen_and_says_so(monkeypatch, default_isolation):
    monkeypatch.setattr(sandbox_module, "_find_bwrap", lambda: None)
    result = run_python("print(6 * 7)", limits=WEAK)
    assert result.ok and result.stdout == "42\n" and result.isolation.startswith("weak")
    monkeypatch.setenv("R1LAB_SANDBOX", "weak")
    result = run_python("print(6 * 7)", limits=SandboxLimits(timeout_s=3))
    assert result.ok and result.isolation.startswith("weak") and sandbox_isolation().startswith("weak")
    assert code_reward(ADD_COMPLETION, ADD_ASSERTS) == 1.0
    monkeypatch.setenv("R1LAB_SANDBOX", "none")
    with pytest.raises(ValueError, match="bwrap, weak"):
        run_python("print(1)")


def test_the_weak_guards_audit_hook_refuses_processes_writes_and_sockets(tmp_path):
    for program in ("import os\nos.fork()", "import subprocess", "import os\nos.system('true')",
                    f"open({str(tmp_path / 'x')!r}, 'w')", f"import sqlite3\nsqlite3.connect({str(tmp_path / 'x')!r})",
                    "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)"):
        result = run_python(program, limits=WEAK)
        assert not result.ok and "not allowed" in result.stderr, program
    assert not (tmp_path / "x").exists()


# --- plain data: the only thing that leaves the program's sandbox ---


def test_plain_data_round_trips_and_nothing_else_passes():
    value = [None, True, 3, -2.5, float("inf"), "s", b"\x00", 1 + 2j, (1, (2,)), {1, 2}, frozenset({3}),
             {"a": [1], (1, 2): {"b": None}}]
    assert decode_plain(encode_plain(value)) == value
    assert type(decode_plain(encode_plain((1,)))) is tuple and type(decode_plain(encode_plain({1}))) is set

    class Yes:
        def __eq__(self, other):
            return True

    class TrueInt(int):
        def __eq__(self, other):
            return True

    for fake in (Yes(), TrueInt(3), [Yes()], {"k": TrueInt(1)}, iter([1]), print):
        with pytest.raises(TypeError, match="not plain data"):
            encode_plain(fake)
    nested = []
    nested.append(nested)
    with pytest.raises(ValueError, match="deeply"):
        encode_plain(nested)
    for forged in ({"object": "Yes"}, {"tuple": "12"}, {"float": "1e999"}, {"a": 1, "b": 2}):
        with pytest.raises(ValueError):
            decode_plain(forged)


# --- the judge: how assert-style tests are split ---


def test_asserts_are_split_into_calls_and_conditions_the_program_never_sees():
    plan = plan_asserts(("import math", "xs = [3, 1]", "expected = [1, 3]", "assert sort_it(xs) == expected",
                         "assert math.isclose(area(2), 12.56, rel_tol=0.001)", "assert add(1, 2) == 3",
                         "assert Solution().two_sum([2, 7], 9) == [0, 1]", "assert list(map(square, [1, 2])) == [1, 4]",
                         "assert is_prime(7)", "assert not is_prime(8)", "assert word(3).startswith('ab')"))
    assert plan.calls == ("sort_it(xs)", "area(2)", "add(1, 2)", "Solution().two_sum([2, 7], 9)",
                          "list(map(square, [1, 2]))", "is_prime(7)", "is_prime(8)", "word(3)")
    assert plan.program_setup == ("import math", "xs = [3, 1]")  # `expected` stays with the judge
    assert "expected = [1, 3]" in plan.judge_setup
    assert [check.kind for check in plan.checks] == ["judge", "judge", "equals", "equals", "equals", "truthy",
                                                     "falsy", "judge"]
    assert plan.checks[2].literal == 3 and plan.checks[-1].condition == "_r1lab_value_7.startswith('ab')"
    sent_to_program = " ".join(plan.calls + plan.program_setup)
    for expected in ("12.56", "[1, 3]", "[0, 1]", "[1, 4]", "'ab'"):
        assert expected not in sent_to_program


@pytest.mark.parametrize("tests,why", [
    (["assert all(f(i) == i for i in range(3))"], "one assert per input"),
    (["assert sum([1, 2]) == 3"], "does not call the solution"),
    (["def check(candidate):\n    assert candidate(1) == 2", "check(f)"], "not supported"),
    (["x = f(3)", "assert x == 9"], "assignments in tests may hold values only"),
    (["assert f(1) =="], "not valid Python"),
])
def test_tests_the_judge_cannot_split_are_refused_when_read(tests, why):
    with pytest.raises(ValueError, match=why):
        parse_tests({"tests": tests})


# --- the "code" verifier and reward: a table of programs ---

ADD_COMPLETION = "<think>easy</think><answer>def add(a, b):\n    return a + b</answer>"
ADD_ASSERTS = {"verifier": "code", "answer": "", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
DOUBLE_IO = {"verifier": "code", "answer": "", "timeout_s": 1.5, "tests": [{"input": "21\n", "output": "42\n"},
                                                                          {"input": "5\n", "output": "10"}]}
APPS_STYLE = {"verifier": "code", "answer": "", "tests": '{"inputs": ["1 2\\n", "3 4\\n"], "outputs": ["3", "7"]}'}
MBPP_STYLE = {"verifier": "code", "answer": "", "tests": [
    "import math", "assert math.isclose(area(2), 12.56, rel_tol=0.001)",
    "assert set(common([1, 2, 3], [2, 3, 4])) == set((2, 3))", "assert sorted(common([5], [5])) == [5]"]}
CLASS_STYLE = {"verifier": "code", "answer": "", "tests": "assert Solution().two_sum([2, 7, 11], 9) == [0, 1]"}

CODE_TABLE = [
    # (example, answer text, expected)
    (ADD_ASSERTS, "def add(a, b):\n    return a + b", True),  # correct, bare
    (ADD_ASSERTS, "Here it is:\n```python\ndef add(x, y):\n    return sum([x, y])\n```", True),  # fenced, other code
    (ADD_ASSERTS, "```py\nadd = lambda a, b: b + a\n```", True),  # equivalent, differently written
    (ADD_ASSERTS, "def add(a, b):\n    print('thinking...')\n    return a + b", True),  # prints do not matter
    (ADD_ASSERTS, "import numpy\ndef add(a, b):\n    return numpy.int64(a) + b", True),  # a numpy scalar is a number
    (ADD_ASSERTS, "def add(a, b):\n    return a - b", False),  # wrong
    (ADD_ASSERTS, "def add(a, b):\n    return float(a + b) if a > 0 else None", False),  # right once only
    (ADD_ASSERTS, "def add(a, b)\n    return a + b", False),  # malformed: syntax error
    (ADD_ASSERTS, "   ", False),  # malformed: empty
    (ADD_ASSERTS, "import sys\nsys.exit(0)", False),  # exits before the tests: a reward hack, refused
    (ADD_ASSERTS, "import os\nos._exit(0)", False),
    (ADD_ASSERTS, "def add(a, b):\n    return a + b\nraise SystemExit(0)", False),  # stops before the tests
    (MBPP_STYLE, "def area(r):\n    return 3.14 * r * r\ndef common(a, b):\n    return [x for x in a if x in b]",
     True),  # conditions judged in a sandbox of their own
    (MBPP_STYLE, "def area(r):\n    return 3 * r * r\ndef common(a, b):\n    return [x for x in a if x in b]", False),
    (CLASS_STYLE, "class Solution:\n    def two_sum(self, xs, t):\n        seen = {}\n        for i, x in "
                  "enumerate(xs):\n            if t - x in seen:\n                return [seen[t - x], i]\n"
                  "            seen[x] = i", True),
    (CLASS_STYLE, "class Solution:\n    def two_sum(self, xs, t):\n        return (0, 1)", False),  # a tuple
    (DOUBLE_IO, "print(int(input()) * 2)", True),  # correct stdin/stdout
    (DOUBLE_IO, "```python\nn = int(input())\nprint(n + n, end='  \\n\\n')\n```", True),  # spacing differs: fine
    (DOUBLE_IO, "print(int(input()) * 3)", False),  # wrong
    (DOUBLE_IO, "print(", False),  # malformed
    (DOUBLE_IO, "while True: pass", False),  # never ends
    (APPS_STYLE, "a, b = map(int, input().split())\nprint(a + b)", True),  # APPS {"inputs", "outputs"} layout
    (APPS_STYLE, "print(3)", False),  # right on the first test only
]


@needs_bwrap
@pytest.mark.parametrize("example,answer,expected", CODE_TABLE)
def test_code_verifier_table(example, answer, expected, default_isolation):
    assert verify(answer, example) is expected


@needs_bwrap
def test_code_reward_reads_the_program_from_the_completion(default_isolation):
    fenced = "<think>easy</think>\n```python\ndef add(a, b):\n    return a + b\n```\n<answer>see above</answer>"
    tagged = "<think>easy</think><answer>def add(a, b):\n    return a + b</answer>"
    assert code_reward(fenced, ADD_ASSERTS) == 1.0 and code_reward(tagged, ADD_ASSERTS) == 1.0
    assert code_reward("<think></think><answer>add = max</answer>", ADD_ASSERTS) == 0.0
    assert code_reward("no tests here", {"prompt": "x", "answer": "1"}) is None


@needs_bwrap
def test_code_helpers(default_isolation):
    assert extract_program("```js\nx\n```\n```python\nprint(1)\n```") == "print(1)"
    assert extract_program("print(2)") == "print(2)" and extract_program("") is None
    assert parse_tests({"tests": "assert f() == 1"}) == (["assert f() == 1"], [])
    with pytest.raises(ValueError, match="tests"):
        parse_tests({"tests": []})
    with pytest.raises(ValueError, match="inputs"):
        parse_tests({"tests": {"inputs": ["1"]}})
    result = run_tests("print(1)", {"tests": [{"input": "", "output": "1"}, {"input": "", "output": "2"}]})
    assert (result.passed, result.total) == (1, 2) and "wrong output" in result.detail
    wrong = run_tests("def add(a, b):\n    return 7", ADD_ASSERTS)
    assert wrong.detail == "asserts: assert add(1, 2) == 3: got 7"
