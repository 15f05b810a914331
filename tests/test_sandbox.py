"""The code sandbox contains hostile programs, and the "code" verifier/reward grades programs through it."""

import os
import shutil
import socket
import sys
import time

import pytest

from r1lab.rewards import code_reward
from r1lab.tasks.verifiers_code import extract_program, parse_tests, run_tests
from r1lab.sandbox import SandboxLimits, run_python, sandbox_isolation
from r1lab.tasks import verify

FAST = SandboxLimits(timeout_s=2.0)


def _processes_of_group_or_user(uid: int) -> int:
    return sum(1 for pid in os.listdir("/proc") if pid.isdigit() and _uid_of(pid) == uid)


def _uid_of(pid: str):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def test_a_program_runs_with_its_stdin_in_a_scrubbed_environment():
    result = run_python("import os, sys\nprint(int(input()) * 2)\nprint(sorted(os.environ))\nprint(os.getcwd())",
                        stdin="21\n", limits=FAST)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "42"
    assert "HOME" in lines[1] and "PYTHONPATH" not in lines[1] and "HF_HUB_OFFLINE" not in lines[1]
    assert os.path.basename(lines[2]).startswith("r1lab-sandbox-")
    assert not os.path.exists(lines[2])  # the working directory is gone afterwards
    assert "rlimits" in result.isolation and "audit hook" in result.isolation


def test_stdin_is_closed_when_not_given():
    result = run_python("input()", limits=FAST)
    assert result.returncode != 0 and "EOFError" in result.stderr


def test_an_infinite_loop_is_killed_on_time():
    started = time.monotonic()
    result = run_python("while True:\n    pass\n", limits=SandboxLimits(timeout_s=1.0))
    assert result.timed_out and not result.ok and result.returncode is None
    assert time.monotonic() - started < 5


def test_a_fork_bomb_is_refused_and_leaves_no_process():
    before = _processes_of_group_or_user(os.getuid())
    result = run_python("import os\nwhile True:\n    os.fork()\n", limits=FAST)
    assert not result.ok and "os.fork is not allowed" in result.stderr
    for spawn in ("import subprocess", "import os\nos.system('true')", "import os\nos.posix_spawn('/bin/true', "
                  "['true'], {})", "import ctypes\nctypes.CDLL(None).fork()", "import pty\npty.fork()"):
        result = run_python(spawn, limits=FAST)
        assert not result.ok and "not allowed" in result.stderr, spawn
    assert _processes_of_group_or_user(os.getuid()) <= before + 2  # other tests' processes may come and go


def _limits_with_process_limit():
    """Limits under which the kernel enforces RLIMIT_NPROC (not root, or root dropping to nobody); else None."""
    for python in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if not python or not os.path.exists(python):
            continue
        limits = SandboxLimits(timeout_s=3.0, audit_hook=False, max_processes=8, python=python)
        if os.geteuid() != 0 or "user nobody" in sandbox_isolation(limits):
            return limits
    return None


def test_a_fork_bomb_that_gets_past_the_audit_hook_meets_the_process_limit():
    limits = _limits_with_process_limit()
    if limits is None:
        pytest.skip("running as root and no interpreter that user nobody may run: RLIMIT_NPROC does not bind root")
    bomb = ("import os, time\nforks = 0\nfor _ in range(500):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
            "    forks += 1\nprint(forks)\n")
    result = run_python(bomb, limits=limits)
    assert result.ok, result.stderr
    assert int(result.stdout) <= limits.max_processes  # the limit stopped it, far below 500
    if "pidns" in result.isolation:  # the sleeping children died with the namespace
        time.sleep(0.3)
        uid = 65534 if "nobody" in result.isolation else os.getuid()
        survivors = [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid and _cmdline(p) == "python"]
        assert not survivors


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return "python" if b"r1lab-sandbox" in file.read() else ""
    except OSError:
        return ""


@pytest.mark.parametrize("program", ["x = bytearray(8 * 1024**3)",
                                     "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))"])
def test_a_memory_blow_up_ends_in_memory_error(program):
    result = run_python(program, limits=SandboxLimits(timeout_s=5.0, memory_mb=256))
    assert not result.ok and not result.timed_out
    assert "MemoryError" in result.stderr or result.returncode < 0  # raised, or killed by the kernel


def test_writing_outside_the_working_directory_is_denied(tmp_path):
    outside = tmp_path / "outside.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    attempts = [f"open({str(outside)!r}, 'w').write('x')",
                f"import os\nos.close(os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT))",
                f"open({str(victim)!r}, 'a').write('x')",
                f"import os\nos.remove({str(victim)!r})",
                f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
                f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('x')",
                f"import os\nos.link({str(victim)!r}, 'hard')\nopen('hard', 'w').write('x')",
                f"import shutil\nshutil.rmtree({str(tmp_path)!r})"]
    for program in attempts:
        result = run_python(program, limits=FAST)
        assert not result.ok and ("not allowed" in result.stderr or "Permission" in result.stderr), program
    assert not outside.exists() and victim.read_text() == "keep me"
    inside = run_python("import os\nos.mkdir('d')\nopen('d/f.txt', 'w').write('ok')\nos.rename('d/f.txt', 'g.txt')\n"
                        "print(open('g.txt').read())", limits=FAST)
    assert inside.ok and inside.stdout.strip() == "ok", inside.stderr


def test_big_files_and_output_are_capped():
    result = run_python("open('big', 'wb').write(b'x' * 5_000_000)", limits=SandboxLimits(timeout_s=5, file_size_mb=1))
    assert not result.ok  # RLIMIT_FSIZE: the write fails (SIGXFSZ or an OSError)
    flood = run_python("import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 10000)",
                       limits=SandboxLimits(timeout_s=5, max_output_bytes=1000))
    assert flood.ok and len(flood.stdout) == 1000


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    yield server
    server.close()


def _connected(server) -> bool:
    try:
        connection, _ = server.accept()
    except (socket.timeout, TimeoutError):
        return False
    connection.close()
    return True


@pytest.mark.parametrize("audit_hook", [True, False], ids=["audit-hook", "namespace-only"])
def test_opening_a_socket_is_refused(listener, audit_hook):
    limits = SandboxLimits(timeout_s=2.0, audit_hook=audit_hook)
    if not audit_hook and "netns" not in sandbox_isolation(limits):
        pytest.skip("no network namespace here (unshare unavailable): the audit hook is the only network guard")
    port = listener.getsockname()[1]
    result = run_python(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                        "s.sendall(b'leak')\nprint('connected')", limits=limits)
    assert not result.ok and "connected" not in result.stdout
    assert not _connected(listener)


# --- the "code" verifier and reward: a table of programs ---

ADD_ASSERTS = {"verifier": "code", "answer": "", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
DOUBLE_IO = {"verifier": "code", "answer": "", "timeout_s": 1.5, "tests": [{"input": "21\n", "output": "42\n"},
                                                          {"input": "5\n", "output": "10"}]}
APPS_STYLE = {"verifier": "code", "answer": "", "tests": '{"inputs": ["1 2\\n", "3 4\\n"], "outputs": ["3", "7"]}'}

CODE_TABLE = [
    # (example, answer text, expected)
    (ADD_ASSERTS, "def add(a, b):\n    return a + b", True),  # correct, bare
    (ADD_ASSERTS, "Here it is:\n```python\ndef add(x, y):\n    return sum([x, y])\n```", True),  # fenced, other code
    (ADD_ASSERTS, "```py\nadd = lambda a, b: b + a\n```", True),  # equivalent, differently written
    (ADD_ASSERTS, "def add(a, b):\n    return a - b", False),  # wrong
    (ADD_ASSERTS, "def add(a, b)\n    return a + b", False),  # malformed: syntax error
    (ADD_ASSERTS, "   ", False),  # malformed: empty
    (ADD_ASSERTS, "import sys\nsys.exit(0)", False),  # exits before the asserts: a reward hack, refused
    (ADD_ASSERTS, "import os\nos._exit(0)", False),
    (DOUBLE_IO, "print(int(input()) * 2)", True),  # correct stdin/stdout
    (DOUBLE_IO, "```python\nn = int(input())\nprint(n + n, end='  \\n\\n')\n```", True),  # spacing differs: fine
    (DOUBLE_IO, "print(int(input()) * 3)", False),  # wrong
    (DOUBLE_IO, "print(", False),  # malformed
    (DOUBLE_IO, "while True: pass", False),  # never ends
    (APPS_STYLE, "a, b = map(int, input().split())\nprint(a + b)", True),  # APPS {"inputs", "outputs"} layout
    (APPS_STYLE, "print(3)", False),  # right on the first test only
]


@pytest.mark.parametrize("example,answer,expected", CODE_TABLE)
def test_code_verifier_table(example, answer, expected):
    assert verify(answer, example) is expected


def test_code_reward_reads_the_program_from_the_completion():
    fenced = "<think>easy</think>\n```python\ndef add(a, b):\n    return a + b\n```\n<answer>see above</answer>"
    tagged = "<think>easy</think><answer>def add(a, b):\n    return a + b</answer>"
    assert code_reward(fenced, ADD_ASSERTS) == 1.0 and code_reward(tagged, ADD_ASSERTS) == 1.0
    assert code_reward("<think></think><answer>add = max</answer>", ADD_ASSERTS) == 0.0
    assert code_reward("no tests here", {"prompt": "x", "answer": "1"}) is None


def test_code_helpers():
    assert extract_program("```js\nx\n```\n```python\nprint(1)\n```") == "print(1)"
    assert extract_program("print(2)") == "print(2)" and extract_program("") is None
    assert parse_tests({"tests": "assert True"}) == (["assert True"], [])
    with pytest.raises(ValueError, match="tests"):
        parse_tests({"tests": []})
    with pytest.raises(ValueError, match="inputs"):
        parse_tests({"tests": {"inputs": ["1"]}})
    result = run_tests("print(1)", {"tests": [{"input": "", "output": "1"}, {"input": "", "output": "2"}]})
    assert (result.passed, result.total) == (1, 2) and "wrong output" in result.detail
