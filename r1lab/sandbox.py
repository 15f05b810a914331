"""Run untrusted Python (a model's program) in a separate, limited process.

    result = run_python("print(int(input()) * 2)", stdin="21\\n", limits=SandboxLimits(timeout_s=2))
    result.ok, result.stdout  # True, "42\\n"

What each layer does (README, "The code sandbox"):
  process     a fresh interpreter (``python -I``) in its own session, stdin closed (or a file), the environment
              scrubbed, a fresh temporary working directory that is deleted afterwards;
  time        a wall-clock timeout, then SIGKILL to the whole process group; RLIMIT_CPU as a second stop;
  namespaces  when ``unshare`` works (root, or unprivileged user namespaces): a new network namespace (no interface
              but a loopback that is down, so no connection anywhere) and a new PID namespace (when its first
              process dies the kernel kills every process in it, also ones that left the process group);
  user        started as root, the program runs as ``nobody`` when that user can run the interpreter (then the
              process limit applies and files of other users are out of reach); otherwise it stays root and
              ``SandboxResult.isolation`` says so;
  rlimits     RLIMIT_AS (memory), RLIMIT_NPROC (processes; not enforced by the kernel for root), RLIMIT_CPU,
              RLIMIT_FSIZE (largest file written, stdout and stderr included), RLIMIT_NOFILE, RLIMIT_CORE = 0;
  audit hook  inside the interpreter, before the program runs (PEP 578): refuses sockets, opening files for
              writing or changing files outside the working directory, creating processes (fork, exec, spawn,
              subprocess, os.system), signalling other processes, ctypes, raising rlimits and building code objects
              by hand. It is a guard against accidents and ordinary hostile code, not a wall: C code that the
              program could still reach can remove it; the layers above do not depend on it.

None of this is a security boundary like a container or a VM: the program can read every file the user it runs as
can read, use CPU and memory up to the limits, and a kernel exploit escapes all of it.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Runs first in the sandboxed interpreter: apply the limits, install the audit hook, then run the program as
# __main__. It is passed with -c, so the program cannot edit it; argv: limits as key=value, then the program file.
_BOOTSTRAP = r'''
import os, sys, resource
args = dict(a.split("=", 1) for a in sys.argv[1:-1])
program = sys.argv[-1]
mb = 1024 * 1024
def _limit(kind, value):
    value = int(value)
    if value > 0:
        resource.setrlimit(kind, (value, value))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
_limit(resource.RLIMIT_AS, int(args["memory_mb"]) * mb)
_limit(resource.RLIMIT_CPU, args["cpu_s"])
_limit(resource.RLIMIT_FSIZE, int(args["file_size_mb"]) * mb)
_limit(resource.RLIMIT_NOFILE, args["max_open_files"])
_limit(resource.RLIMIT_NPROC, args["nproc"])  # 0: not set (the kernel ignores it for root anyway)
if args["audit_hook"] == "1":
    root = os.path.realpath(os.getcwd())
    realpath, fsdecode, getpid = os.path.realpath, os.fsdecode, os.getpid
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    denied = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
              "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
              "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
              "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata", "ctypes.cdata/buffer",
              "ctypes.memmove", "ctypes.memset", "ctypes.string_at", "ctypes.wstring_at",
              "resource.setrlimit", "resource.prlimit", "code.__new__", "sys.remote_exec"}
    # _posixsubprocess.fork_exec raises no audit event of its own; the others can corrupt memory
    denied_imports = {"_posixsubprocess", "_testcapi", "_testinternalcapi", "_xxsubinterpreters"}
    # event -> (positions of path arguments that must stay inside the working directory, positions of dir_fd
    # arguments, which must be unset (-1): a path relative to a descriptor cannot be checked)
    path_events = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
                   "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)),
                   "os.truncate": ((0,), ()), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
                   "os.utime": ((0,), (3,)), "os.chflags": ((0,), ()), "os.setxattr": ((0,), ()),
                   "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,))}

    def inside(path):
        if isinstance(path, int):  # an already open descriptor
            return True
        try:
            path = realpath(fsdecode(path))
        except Exception:
            return False
        return path == root or path.startswith(root + "/") or path == "/dev/null"

    def refuse(what):
        raise PermissionError("sandbox: " + what + " is not allowed")

    def hook(event, hook_args):
        if event == "open":
            path, mode, flags = hook_args
            writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and not inside(path):
                refuse("writing " + str(path))
        elif event in path_events:
            paths, dir_fds = path_events[event]
            for i in paths:
                if not inside(hook_args[i]):
                    refuse(event + " on " + str(hook_args[i]))
            if any(hook_args[i] not in (None, -1) for i in dir_fds if i < len(hook_args)):
                refuse(event + " relative to a directory descriptor")
        elif event in denied or (event == "ctypes.dlopen" and hook_args[0] is not None):
            refuse(event)  # ctypes may load (numpy imports it) but not open libraries or call into them
        elif event == "import" and hook_args[0] in denied_imports:
            refuse("importing " + hook_args[0])
        elif event in ("os.kill", "os.killpg") and hook_args[0] not in (0, getpid()):
            refuse(event)

    sys.addaudithook(hook)
del args, mb
import runpy
sys.argv = [program]
runpy.run_path(program, run_name="__main__")
'''


@dataclass
class SandboxLimits:
    timeout_s: float = 5.0  # wall-clock limit; the whole process group is killed after it
    memory_mb: int = 512  # RLIMIT_AS: address space of the interpreter (MemoryError beyond it)
    max_processes: int = 16  # RLIMIT_NPROC headroom above the user's current task count (ignored for root)
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write (stdout and stderr are files)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 1_000_000  # stdout / stderr read back at most this much
    audit_hook: bool = True  # the in-interpreter guard (network, writes outside the directory, processes)
    namespaces: bool = True  # new network and PID namespaces when `unshare` allows it
    drop_to_nobody: bool = True  # started as root: run the program as user nobody when it can run the interpreter
    python: str = ""  # interpreter (empty: $R1LAB_SANDBOX_PYTHON, else this one, sys.executable)


@dataclass
class SandboxResult:
    returncode: int | None  # None when killed on timeout
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    isolation: str  # which layers were active, e.g. "netns+pidns, user nobody, rlimits, audit hook"

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _nobody() -> tuple[int, int]:
    import pwd  # POSIX only: imported here so that importing r1lab works elsewhere

    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


@functools.lru_cache(maxsize=None)
def _launcher(python: str, namespaces: bool, drop: bool) -> tuple[tuple[str, ...], str, bool]:
    """The command prefix that wraps the interpreter, a description of it, and whether it drops to nobody.

    Probed once per setting: namespaces need root or unprivileged user namespaces; dropping to nobody needs an
    interpreter that nobody may run (a virtual environment under /root is not).
    """
    unshare = shutil.which("unshare") if namespaces else None
    root = os.geteuid() == 0
    candidates = []
    if unshare:
        ns = [unshare, "--net", "--pid", "--fork", "--kill-child"]
        if root and drop:
            uid, gid = _nobody()
            candidates.append((tuple(ns + ["--setgid", str(gid), "--setuid", str(uid), "--"]),
                               "netns+pidns, user nobody", True))
        if root:
            candidates.append((tuple(ns + ["--"]), "netns+pidns, user root (process limit not enforced)", False))
        else:
            candidates.append((tuple([unshare, "--user", "--map-root-user"] + ns[1:] + ["--"]),
                               "userns+netns+pidns", False))
    if root and drop and shutil.which("setpriv"):  # no namespaces here (a container may forbid them)
        uid, gid = _nobody()
        candidates.append(((shutil.which("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"),
                           "no namespaces, user nobody", True))
    for prefix, description, drops in candidates:
        try:
            probe = subprocess.run([*prefix, python, "-I", "-B", "-c", "pass"], cwd="/", stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix, description, drops
    return (), "no namespaces, user root (process limit not enforced)" if root else "no namespaces", False


def _python(limits: SandboxLimits) -> str:
    return limits.python or os.environ.get("R1LAB_SANDBOX_PYTHON") or sys.executable


def sandbox_isolation(limits: SandboxLimits | None = None) -> str:
    """What `run_python` will use with these limits, e.g. "netns+pidns, user nobody, rlimits, audit hook"."""
    limits = limits or SandboxLimits()
    _, description, _ = _launcher(_python(limits), limits.namespaces, limits.drop_to_nobody)
    return description + ", rlimits" + (", audit hook" if limits.audit_hook else "")


def _user_tasks(uid: int) -> int:
    """Processes and threads that ``uid`` runs now: RLIMIT_NPROC counts all of them, not only the sandbox's."""
    tasks = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    tasks += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return tasks


def _read_capped(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as file:
            return file.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_python(code: str, *, stdin: str | None = None, limits: SandboxLimits | None = None,
               files: dict[str, str] | None = None) -> SandboxResult:
    """Run ``code`` as a Python program under the sandbox; ``files`` are written into its working directory first."""
    limits = limits or SandboxLimits()
    python = _python(limits)
    prefix, description, drops = _launcher(python, limits.namespaces, limits.drop_to_nobody)
    workdir = tempfile.mkdtemp(prefix="r1lab-sandbox-")
    started = time.monotonic()
    try:
        program = os.path.join(workdir, "program.py")
        for name, text in {**(files or {}), "program.py": code}.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as file:
                file.write(text)
        if stdin is not None:
            with open(os.path.join(workdir, ".stdin"), "w", encoding="utf-8") as file:
                file.write(stdin)
        if drops:
            uid, gid = _nobody()
            for name in os.listdir(workdir):
                os.chown(os.path.join(workdir, name), uid, gid)
            os.chown(workdir, uid, gid)
        cpu_s = math.ceil(limits.timeout_s) + 1
        # RLIMIT_NPROC binds every user but root: allow max_processes more tasks than the user runs now
        runs_as = _nobody()[0] if drops else os.getuid()
        nproc = _user_tasks(runs_as) + limits.max_processes if runs_as != 0 else 0
        argv = [*prefix, python, "-I", "-B", "-c", _BOOTSTRAP,
                f"memory_mb={limits.memory_mb}", f"cpu_s={cpu_s}", f"file_size_mb={limits.file_size_mb}",
                f"max_open_files={limits.max_open_files}", f"nproc={nproc}",
                f"audit_hook={int(limits.audit_hook)}", program]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
        # Output goes to files, not pipes: RLIMIT_FSIZE bounds them and nothing can fill the parent's memory.
        with open(out_path, "wb") as out, open(err_path, "wb") as err, \
                (open(os.path.join(workdir, ".stdin"), "rb") if stdin is not None else open(os.devnull, "rb")) as inp:
            process = subprocess.Popen(argv, cwd=workdir, env=env, stdin=inp, stdout=out, stderr=err,
                                       start_new_session=True, close_fds=True)
            timed_out = False
            try:
                process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # The whole group goes, also on a normal exit (children it left behind); with a PID namespace the
                # kernel takes the rest once the namespace's first process is gone.
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                process.wait()
        return SandboxResult(
            returncode=None if timed_out else process.returncode,
            stdout=_read_capped(out_path, limits.max_output_bytes),
            stderr=_read_capped(err_path, limits.max_output_bytes),
            timed_out=timed_out,
            seconds=time.monotonic() - started,
            isolation=description + ", rlimits" + (", audit hook" if limits.audit_hook else ""),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
