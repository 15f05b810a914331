"""Hostile programs against the bwrap sandbox and the code judge, each contained (README, "The code sandbox").

Every program here runs with the audit hook off: what stops it is bwrap, the rlimits and the judge outside the
program's process, not a guard inside its own interpreter.
"""

import glob
import os
import socket
import time
import uuid

import pytest

from r1lab.rewards import code_reward
from r1lab.sandbox import SandboxLimits, bwrap_available, run_python
from r1lab.tasks.verifiers_code import run_tests

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap (bwrap) is not installed or cannot create "
                                "a sandbox here: `apt-get install bubblewrap` (CI installs it)")

WALLS = SandboxLimits(timeout_s=3.0, audit_hook=False, isolation="bwrap")  # a run takes ~0.1 s idle


@pytest.fixture(autouse=True)
def _bwrap_by_default(monkeypatch):
    monkeypatch.delenv("R1LAB_SANDBOX", raising=False)


@pytest.fixture
def home_target():
    """A file name in the caller's home folder that must never appear (removed afterwards if it does)."""
    path = os.path.join(os.path.expanduser("~"), f"r1lab-pwned-{uuid.uuid4().hex}")
    yield path
    for made in glob.glob(glob.escape(path) + "*"):
        os.remove(made)


def _run(program: str, limits: SandboxLimits = WALLS):
    return run_python(program, limits=limits)


# --- writes outside the working directory, by every route the review found ---


def test_a_write_relative_to_a_directory_descriptor_reaches_nothing_outside(tmp_path, home_target):
    targets = [(os.path.dirname(home_target), os.path.basename(home_target)), (str(tmp_path), "pwned")]
    program = f"""
import os
for folder, name in {targets!r} + [("/", "pwned"), ("/usr", "pwned"), ("/proc", "pwned")]:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, dir_fd=fd))
        print("wrote", folder)
    except OSError as error:
        print("refused", folder, error.errno)
"""
    result = _run(program)
    assert result.ok, result.stderr
    assert "wrote" not in result.stdout and result.stdout.count("refused") == 5
    assert not os.path.lexists(home_target) and not (tmp_path / "pwned").exists()


def test_sqlite_mkfifo_and_mknod_create_nothing_outside(tmp_path, home_target):
    outside = [str(tmp_path / "x.db"), home_target, "/x.db", "/usr/x.db"]
    program = f"""
import os, sqlite3, stat
for path in {outside!r}:
    for name, make in (("sqlite", lambda p: sqlite3.connect(p).execute("create table t (x)")),
                       ("fifo", os.mkfifo), ("node", lambda p: os.mknod(p, stat.S_IFREG | 0o600))):
        try:
            make(path + name)
            print("made", name, path)
        except (OSError, sqlite3.Error) as error:
            print("refused", name, path)
sqlite3.connect("inside.db").execute("create table t (x)")  # the working directory works
os.mkfifo("inside.fifo")
print("inside", sorted(os.listdir(".")))
"""
    result = _run(program)
    assert result.ok, result.stderr
    assert "made" not in result.stdout and result.stdout.count("refused") == 12
    assert "inside.db" in result.stdout and "inside.fifo" in result.stdout
    assert sorted(os.listdir(tmp_path)) == []
    assert not any(os.path.lexists(home_target + name) for name in ("sqlite", "fifo", "node"))


def test_a_device_node_cannot_be_made_and_no_real_device_is_there():
    program = """
import os, stat
for name, major, minor in (("mem", 1, 1), ("null", 1, 3), ("disk", 8, 0)):
    try:
        os.mknod(name, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        print("made", name)
    except OSError as error:
        print("refused", name, error.errno)
for path in ("mem", "/dev/mem", "/dev/kmsg", "/dev/sda", "/dev/port"):
    try:
        with open(path, "r+b") as file:  # an existing node only: never create a plain file here
            file.write(b"x")
        print("wrote", path)
    except OSError:
        print("cannot open", path)
"""
    result = _run(program)
    assert result.ok, result.stderr
    assert result.stdout.count("refused") == 3 and "made" not in result.stdout and "wrote" not in result.stdout


def test_plain_writes_renames_links_and_removals_outside_are_denied(tmp_path):
    outside, victim = tmp_path / "outside.txt", tmp_path / "victim.txt"
    victim.write_text("keep me")
    attempts = [f"open({str(outside)!r}, 'w').write('x')",
                f"open({str(victim)!r}, 'a').write('x')",
                f"import os\nos.remove({str(victim)!r})",
                f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
                f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('x')",
                f"import os\nos.link({str(victim)!r}, 'hard')\nopen('hard', 'w').write('x')",
                f"import shutil\nshutil.rmtree({str(tmp_path)!r})"]
    for program in attempts:
        result = _run(program)
        assert not result.ok and ("Error" in result.stderr), program
    assert not outside.exists() and victim.read_text() == "keep me"
    inside = _run("import os\nos.mkdir('d')\nopen('d/f.txt', 'w').write('ok')\nos.rename('d/f.txt', 'g.txt')\n"
                  "print(open('g.txt').read())")
    assert inside.ok and inside.stdout.strip() == "ok", inside.stderr


def test_no_user_namespace_of_its_own_so_no_mount_past_the_limits():
    """Root in a namespace of its own could mount a tmpfs as large as half the RAM, past every limit."""
    program = """
import ctypes, subprocess, threading
made = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                       "mount -t tmpfs none /sandbox && echo mounted"], capture_output=True, text=True)
print("unshare exit", made.returncode, made.stdout.strip())
libc = ctypes.CDLL(None, use_errno=True)
print("unshare(CLONE_NEWUSER)", libc.unshare(0x10000000), ctypes.get_errno())
threading.Thread(target=print, args=("threads still start",)).start()
print(subprocess.run(["echo", "processes still start"], capture_output=True, text=True).stdout.strip())
"""
    result = _run(program)
    assert result.ok, result.stderr
    assert "mounted" not in result.stdout and "unshare exit 0" not in result.stdout
    assert "unshare(CLONE_NEWUSER) -1" in result.stdout
    assert "threads still start" in result.stdout and "processes still start" in result.stdout
    assert "no nested user namespaces" in result.isolation


# --- secrets of the caller ---


def test_the_callers_environment_is_out_of_reach_even_through_proc(monkeypatch, tmp_path):
    secret = f"sk-fake-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    (tmp_path / "token").write_text(secret)
    program = f"""
import os, glob
found = []
print("parent visible", os.path.exists("/proc/{os.getpid()}"), os.path.exists("/proc/{os.getppid()}"))
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline") + ["/proc/{os.getpid()}/environ",
                                                                           {str(tmp_path / 'token')!r}]:
    try:
        found.append(open(path, "rb").read().decode(errors="replace"))
    except OSError:
        pass
found.append(str(dict(os.environ)))
print("\\n".join(found))
"""
    result = _run(program)
    assert result.ok, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "parent visible False False" in result.stdout
    pids = eval(result.stdout.split("pids ", 1)[1].splitlines()[0])
    assert max(pids) < 10  # a PID namespace of its own: bwrap's reaper, the program, little else


# --- resources ---


def test_an_infinite_loop_is_killed_on_time():
    started = time.monotonic()
    result = _run("while True:\n    pass\n", SandboxLimits(timeout_s=1.0, audit_hook=False, isolation="bwrap"))
    assert result.timed_out and not result.ok and result.returncode is None
    assert time.monotonic() - started < 4


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    if marker.encode() in file.read():
                        found.append(pid)
            except OSError:
                pass
    return found


def test_a_fork_bomb_meets_the_process_limit_and_leaves_no_process():
    marker = f"61.{uuid.uuid4().int % 10**9}"  # the children become `sleep <marker>`: findable on the host
    bomb = f"""
import os
forks = 0
for _ in range(500):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", "{marker}"])
    forks += 1
print(forks)
"""
    limits = SandboxLimits(timeout_s=3.0, audit_hook=False, max_processes=8, isolation="bwrap")
    result = _run(bomb, limits)
    assert result.ok, result.stderr
    if "process limit is not enforced" not in result.isolation:
        assert int(result.stdout) <= limits.max_processes  # the limit stopped it, far below 500
    time.sleep(0.2)
    assert _processes_with(marker) == []  # the sleeping children died with the PID namespace
    endless = _run("import os\nwhile True:\n    os.fork()\n", limits)
    assert not endless.ok and not endless.timed_out  # fork fails, the bomb ends


def test_a_program_that_outlives_its_timeout_in_a_child_leaves_no_process():
    marker = f"62.{uuid.uuid4().int % 10**9}"
    program = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n"
               f"    os.execv('/bin/sleep', ['sleep', '{marker}'])\ntime.sleep(30)\n")
    result = _run(program, SandboxLimits(timeout_s=1.0, audit_hook=False, isolation="bwrap"))
    assert result.timed_out
    time.sleep(0.2)
    assert _processes_with(marker) == []


@pytest.mark.parametrize("program", ["x = bytearray(8 * 1024**3)",
                                     "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))"])
def test_a_memory_blow_up_ends_in_memory_error(program):
    result = _run(program, SandboxLimits(timeout_s=5.0, memory_mb=256, audit_hook=False, isolation="bwrap"))
    assert not result.ok and not result.timed_out
    assert "MemoryError" in result.stderr or result.returncode != 0


# --- network ---


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


def _connected(server) -> bool:
    try:
        connection, _ = server.accept()
    except (socket.timeout, TimeoutError):
        return False
    connection.close()
    return True


def test_a_connection_to_a_listening_server_on_the_host_fails(listener):
    port = listener.getsockname()[1]
    abstract = f"\0r1lab-test-{uuid.uuid4().hex}"
    unix_server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_server.bind(abstract)
    unix_server.listen(1)
    try:
        program = f"""
import socket
for family, address in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_UNIX, {abstract!r})):
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(address)
        s.sendall(b"leak")
        print("connected", family)
    except OSError as error:
        print("refused", family)
"""
        result = _run(program)
        assert result.ok, result.stderr
        assert "connected" not in result.stdout and result.stdout.count("refused") == 2
        assert not _connected(listener)
    finally:
        unix_server.close()


# --- the judge: rewards that cannot be earned without solving ---

ADD = {"verifier": "code", "answer": "", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
SECRET_EXPECTED = {"verifier": "code", "answer": "", "tests": ["assert answer(1) == 'expected-7f3a9c'"]}


def _reward(program: str, example: dict) -> float:
    return code_reward(f"<answer>\n```python\n{program}\n```\n</answer>", example)


def test_reading_a_marker_from_the_callers_frames_and_exiting_earns_nothing():
    program = """
import os, sys, gc
seen = set()
frame = sys._getframe()
while frame is not None:
    for scope in (frame.f_locals, frame.f_globals):
        for value in list(scope.values()):
            if isinstance(value, str):
                seen.add(value)
    frame = frame.f_back
for obj in gc.get_objects():
    if isinstance(obj, dict):
        seen.update(v for v in obj.values() if isinstance(v, str) and len(v) < 200)
sys.stdout.write("\\n".join(sorted(seen)) + "\\n")
sys.stdout.flush()
os._exit(0)
"""
    assert _reward(program, ADD) == 0.0
    assert _reward("def add(a, b):\n    return a + b", ADD) == 1.0  # the same example is winnable


@pytest.mark.parametrize("program", [
    "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
    "def add(a, b):\n    return Yes()",
    "class Three(int):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Three(3)",
    "class Text(str):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Text('3')",
    "class Yes(list):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Yes()",
])
def test_an_object_that_equals_everything_passes_nothing(program):
    assert _reward(program, ADD) == 0.0


def test_printing_whatever_the_judge_might_look_for_earns_nothing():
    forgeries = ['True', 'OK', 'PASS', 'passed', 'all tests passed', '[{"value": true}, {"value": true}]',
                 '[{"value": 3}, {"value": 0}]', '{"passed": 2, "total": 2}', '[true, true]', '0', '1.0']
    program = f"""
import os, sys
for text in {forgeries!r}:
    print(text)
    for fd in range(1, 20):
        try:
            os.write(fd, (text + "\\n").encode())
        except OSError:
            pass
sys.stdout.flush()
os._exit(0)
"""
    assert _reward(program, ADD) == 0.0
    # Writing values into the judge's channel is just returning them: wrong ones fail, and the right ones are the
    # answers themselves (a program that knows them could as well return them)
    forged = 'import os\nos.write(3, b\'[{{"value": {}}}, {{"value": 0}}]\')\nos._exit(0)'
    assert run_tests(forged.format(4), ADD).detail == "asserts: assert add(1, 2) == 3: got 4"
    assert run_tests(forged.format(3), ADD).all_passed


def test_rewriting_the_harness_from_inside_earns_nothing():
    program = """
import json, sys
real_dumps = json.dumps
json.dumps = lambda value, *a, **k: real_dumps([{"value": True} for _ in range(2)])
def add(a, b):
    return True
"""
    assert _reward(program, ADD) == 0.0


def test_the_expected_values_never_reach_the_program():
    hunter = """
import gc, os, sys
def _search():
    texts = []
    for root, _, names in os.walk("/sandbox"):
        for name in names:
            try:
                texts.append(open(os.path.join(root, name), errors="replace").read())
            except OSError:
                pass
    for path in ("/proc/self/cmdline", "/proc/self/environ", "/proc/1/cmdline"):
        try:
            texts.append(open(path, "rb").read().decode(errors="replace"))
        except OSError:
            pass
    texts += [str(o) for o in gc.get_objects() if isinstance(o, (str, dict, list, tuple))]
    frame = sys._getframe()
    while frame is not None:
        texts.append(str(frame.f_locals))
        frame = frame.f_back
    for text in texts:
        at = text.find("expected-")
        if at >= 0:
            return text[at:at + 15]
    return "not found"
def answer(n):
    return _search()
"""
    assert _reward(hunter, SECRET_EXPECTED) == 0.0
    assert _reward("def answer(n):\n    return 'expected-7f3a9c'", SECRET_EXPECTED) == 1.0  # knowing it passes
