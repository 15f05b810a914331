"""Run untrusted Python (a model's program) in a separate, isolated process.

    result = run_python("print(int(input()) * 2)", stdin="21\\n", limits=SandboxLimits(timeout_s=2))
    result.ok, result.stdout  # True, "42\\n"

The isolation is bubblewrap (``bwrap``, README "The code sandbox"), a tool made for it. The program sees:
  filesystem  a read-only view of the system (/usr and its /bin, /lib links, the few /etc files the dynamic loader
              reads) and of the interpreter's installation (``sys.base_prefix`` and the virtual environment), a fresh
              /proc of its own PID namespace, a minimal /dev (null, zero, urandom...: no real device), and one
              writable place: a size-capped tmpfs that is its working directory (``/sandbox``). Nothing else of the
              host: not /root, /home, /tmp, /sys, the host's /proc, the run folders. The root itself is read-only;
  namespaces  new user (when needed), PID, network (no interface but loopback), IPC, UTS, cgroup and mount
              namespaces; when its first process ends every process the program started dies with it;
  user        uid/gid 65534. Started as root, bwrap keeps the host's user namespace and the program switches to
              uid 65534 itself before anything of it runs, so it is unprivileged outside too (the kernel enforces
              the process limit, files of root are out of reach); when uid 65534 cannot read the interpreter's folders
              (the self-test finds out), or started as another user, a user namespace maps 65534 to the caller's
              uid. Mapped to root, the kernel does not enforce the process limit: `sandbox_isolation` says so, and
              only the timeout and the memory limit bind a fork bomb;
  privileges  every capability dropped (as root the switch of user is the last use of the two it keeps),
              no new privileges, no user namespace of its own (a seccomp filter on x86_64 and aarch64, see
              `_seccomp_filter`; else bwrap's --disable-userns where a user namespace is used), its own session (no
              terminal), no inherited file descriptors, a cleared environment (PATH, LANG, HOME and TMPDIR = the
              working directory, one BLAS/OpenMP thread);
  limits      a wall-clock timeout, then SIGKILL to the whole sandbox (``--die-with-parent``: also when the caller
              dies); RLIMIT_AS (memory), RLIMIT_NPROC (processes), RLIMIT_CPU, RLIMIT_FSIZE (largest file; stdout
              and stderr are files the caller reads back capped), RLIMIT_NOFILE, RLIMIT_CORE = 0, set inside before
              the program starts;
  audit hook  on by default (``audit_hook``), inside the interpreter (PEP 578): refuses sockets, writes outside
              the working directory, new processes, ctypes. An extra layer only: nothing above depends on it.

bwrap is probed once per interpreter with a self-test in a real sandbox; bubblewrap 0.5 or newer is needed (0.7 for
the size cap of the working directory, which the isolation line otherwise says is missing).

Without ``bwrap`` (or when it cannot create a sandbox, e.g. in a container that forbids namespaces) `run_python`
refuses with `SandboxUnavailable`, which names the fix (``apt-get install bubblewrap``) and the explicit opt-in to
the weaker guard: ``R1LAB_SANDBOX=weak`` or ``SandboxLimits(isolation="weak")``. The weak guard is a fresh
``python -I`` in its own session with a scrubbed environment, network and PID namespaces when ``unshare`` works,
user ``nobody`` when root can switch to it, the same rlimits and the audit hook. It is a guard against accidents,
not a wall: the program sees the host's filesystem and /proc (as root, the caller's environment) and can write
wherever its user may through calls the hook does not see (a path relative to a directory descriptor, mkfifo,
mknod). `sandbox_isolation` says which one runs.

Neither is a virtual machine: a kernel exploit escapes both, and the program may use CPU and memory up to the limits.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Runs first in the sandboxed interpreter, passed with -c (the program cannot edit it). argv: key=value settings,
# then the program file. Order matters: read the input files while still the starting user, leave root, lower the
# limits, write the inputs into the working directory (so they belong to the program's user), then run the program.
_BOOTSTRAP = r'''
import os, sys, resource
args = dict(a.split("=", 1) for a in sys.argv[1:-1])
program = sys.argv[-1]
inputs = {}
if args["inputs"]:
    for name in os.listdir(args["inputs"]):
        with open(os.path.join(args["inputs"], name), "rb") as file:
            inputs[name] = file.read()
if args["uid"]:
    os.setgroups([])
    os.setgid(int(args["gid"]))
    os.setuid(int(args["uid"]))  # from root to another user: the kernel clears every capability
    if 0 in os.getresuid() or 0 in os.getresgid():
        raise SystemExit("sandbox: could not leave root")
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
for name, data in inputs.items():
    with open(name, "wb") as file:
        file.write(data)
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
                   "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,)), "sqlite3.connect": ((0,), ())}

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
                if i < len(hook_args) and hook_args[i] != ":memory:" and not inside(hook_args[i]):
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
del args, mb, inputs
import runpy
sys.argv = [program]
runpy.run_path(program, run_name="__main__")
'''

# A program that checks, inside a new sandbox, what `_bwrap_plan` promises: it left root, the filesystem is
# read-only but for the working directory, and the program's user can still read every folder it imports from.
_SELF_TEST = r'''
import os, sys, json, decimal, fractions, collections
for folder in sys.path:
    try:
        os.listdir(folder)  # PermissionError: a folder the program's user cannot read
    except (FileNotFoundError, NotADirectoryError):
        pass
open("written", "w").write("ok")
try:
    open("/written", "w")
    raise SystemExit("the root of the sandbox is writable")
except OSError:
    pass
print(os.getuid(), os.getgid(), os.getcwd())
'''

_WORKDIR = "/sandbox"  # the tmpfs working directory inside bwrap
_INPUTS = "/.r1lab-inputs"  # where the host folder with the program's files is bound, read-only
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/alternatives")
_SANDBOX_UID = 65534
# One BLAS/OpenMP thread: every thread counts against the process limit
_SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": _WORKDIR, "TMPDIR": _WORKDIR,
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_ISOLATION_MODES = ("bwrap", "weak")


class SandboxUnavailable(RuntimeError):
    """No isolation that `run_python` may use: bwrap is missing or broken and the weak guard was not chosen."""


@dataclass
class SandboxLimits:
    timeout_s: float = 5.0  # wall-clock limit; the whole sandbox is killed after it
    memory_mb: int = 512  # RLIMIT_AS: address space of the interpreter (MemoryError beyond it)
    max_processes: int = 16  # RLIMIT_NPROC: processes and threads the program may add
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write (stdout and stderr are files)
    disk_mb: int = 64  # bwrap: size of the tmpfs working directory (it lives in memory)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 1_000_000  # stdout / stderr read back at most this much
    audit_hook: bool = True  # the in-interpreter guard (network, writes outside the directory, processes)
    isolation: str = ""  # "bwrap" or "weak" (opt-in, README); empty: $R1LAB_SANDBOX, else "bwrap"
    namespaces: bool = True  # weak only: new network and PID namespaces when `unshare` allows it
    drop_to_nobody: bool = True  # weak only: started as root, run as nobody when it can run the interpreter
    python: str = ""  # interpreter (empty: $R1LAB_SANDBOX_PYTHON, else this one, sys.executable)


@dataclass
class SandboxResult:
    returncode: int | None  # None when killed on timeout
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    isolation: str  # which isolation ran: "bwrap: ..." or "weak: ..." (see `sandbox_isolation`)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class _BwrapPlan:
    argv: tuple[str, ...]  # bwrap and its options, up to (not including) the interpreter
    description: str
    drop_uid: int | None  # the bootstrap switches to this uid (started as root), else None
    nproc_counts_host_tasks: bool  # RLIMIT_NPROC counts every task of the uid on the host (needs headroom)
    sized_tmpfs: bool = True  # the working directory's tmpfs is capped with --size (bubblewrap 0.7+)
    seccomp: bool = False  # load `_seccomp_filter` (no new user namespaces)


def _nobody() -> tuple[int, int]:
    import pwd  # POSIX only: imported here so that importing r1lab works elsewhere

    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return _SANDBOX_UID, _SANDBOX_UID


def _find_bwrap() -> str | None:
    return shutil.which("bwrap")


def _python(limits: SandboxLimits) -> str:
    return limits.python or os.environ.get("R1LAB_SANDBOX_PYTHON") or sys.executable


def _isolation_mode(limits: SandboxLimits) -> str:
    mode = (limits.isolation or os.environ.get("R1LAB_SANDBOX", "") or "bwrap").strip().lower()
    if mode not in _ISOLATION_MODES:
        raise ValueError(f"sandbox isolation {mode!r} (SandboxLimits.isolation or $R1LAB_SANDBOX) is not one of "
                         f"{', '.join(_ISOLATION_MODES)}")
    return mode


def _opt_in_hint() -> str:
    return ("Install it (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`), or opt in "
            "to the weaker in-process guard, which does not wall off the host's files or /proc, with the "
            "environment variable R1LAB_SANDBOX=weak or SandboxLimits(isolation='weak') "
            "(README, \"The code sandbox\").")


def _under(path: str, roots) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _interpreter_paths(python: str) -> list[str]:
    """The folders the interpreter needs read-only: its installation prefixes and the folders of its executable."""
    try:
        probe = subprocess.run([python, "-I", "-c", "import sys, json; print(json.dumps([sys.prefix, "
                                "sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]))"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        prefixes = json.loads(probe.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        prefixes = []
    # A prefix that is one of these would expose far more than an installation (an interpreter installed straight
    # into a home folder): it is left out, and the self-test fails if the interpreter needed it
    too_wide = {"/", "/home", "/root", "/tmp", "/var", "/etc", "/run", "/srv", "/opt", "/mnt", "/media",
                os.path.realpath(os.path.expanduser("~"))}
    paths = []
    for path in [*prefixes, os.path.dirname(os.path.abspath(python)), os.path.dirname(os.path.realpath(python))]:
        path = os.path.realpath(path) if os.path.exists(path) else ""
        if path and path not in too_wide and not _under(path, _SYSTEM_PATHS) and not _under(path, paths):
            paths = [p for p in paths if not _under(p, [path])] + [path]
    return paths


def _filesystem_options(python: str) -> list[str]:
    options = []
    for path in _SYSTEM_PATHS:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            options += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            options += ["--ro-bind", path, path]
    for path in _SYSTEM_FILES:
        if os.path.exists(path):
            options += ["--ro-bind", path, path]
    for path in _interpreter_paths(python):
        # bwrap creates missing parents 0700: make them traversable for the program's user
        parents = []
        parent = os.path.dirname(path)
        while parent not in ("/", "") and not _under(parent, _SYSTEM_PATHS):
            parents.insert(0, parent)
            parent = os.path.dirname(parent)
        for folder in parents:
            options += ["--perms", "0755", "--dir", folder]
        options += ["--ro-bind", path, path]
    # a fresh /proc of the new PID namespace, a /dev without real devices
    return options + ["--proc", "/proc", "--dev", "/dev"]


def _kernel_counts_nproc_per_user_namespace() -> bool:
    """Linux 5.14+ counts RLIMIT_NPROC per user namespace (ucounts); older kernels count every task of the uid."""
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 14)


def _bwrap_version(bwrap: str) -> tuple[int, ...]:
    try:
        output = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
        return tuple(int(part) for part in output.split()[-1].split("."))
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return ()


# Syscall numbers and audit architectures (linux/audit.h) of the machines the seccomp filter knows
_SECCOMP_ARCHES = {"x86_64": (0xC000003E, {"unshare": 272, "clone": 56, "clone3": 435}),
                   "aarch64": (0xC00000B7, {"unshare": 97, "clone": 220, "clone3": 435})}
_CLONE_NEWUSER = 0x10000000


def _seccomp_filter() -> bytes | None:
    """A classic BPF seccomp program (for bwrap --seccomp) that refuses new user namespaces; None on other machines.

    A user namespace of its own would give the program root inside it: mounts of unbounded tmpfs (memory past every
    limit) and the kernel's large user-namespace attack surface. unshare and clone with CLONE_NEWUSER fail with
    EPERM; clone3, whose flags a filter cannot read, fails with ENOSYS, so that the C library falls back to clone;
    a system call of another ABI (i386, x32) kills the process.
    """
    if os.uname().machine not in _SECCOMP_ARCHES:
        return None
    arch, numbers = _SECCOMP_ARCHES[os.uname().machine]
    load, jeq, jge, and_, ret = 0x20, 0x15, 0x35, 0x54, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, ALU|AND|K, RET|K
    allow, kill = 0x7FFF0000, 0x80000000
    deny, no_such_call = 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ERRNO | EPERM, | ENOSYS
    # (code, jump if true, jump if false, k), jumps as labels resolved below
    program = [
        (load, 0, 0, 4), (jeq, "nr", "kill", arch),  # seccomp_data.arch
        ("nr", load, 0, 0, 0), (jge, "deny", 0, 0x40000000),  # seccomp_data.nr; x32 calls carry bit 30
        (jeq, "enosys", 0, numbers["clone3"]), (jeq, "flags", 0, numbers["unshare"]),
        (jeq, "flags", "allow", numbers["clone"]),
        ("flags", load, 0, 0, 16), (and_, 0, 0, _CLONE_NEWUSER),  # low half of args[0]: the flags
        (jeq, "allow", "deny", 0),
        ("allow", ret, 0, 0, allow), ("deny", ret, 0, 0, deny), ("enosys", ret, 0, 0, no_such_call),
        ("kill", ret, 0, 0, kill),
    ]
    labels, instructions = {}, []
    for entry in program:
        if isinstance(entry[0], str):
            labels[entry[0]] = len(instructions)
            entry = entry[1:]
        instructions.append(entry)
    encoded = b""
    for index, (code, if_true, if_false, k) in enumerate(instructions):
        jump = [labels[target] - index - 1 if isinstance(target, str) else target for target in (if_true, if_false)]
        encoded += struct.pack("=HBBI", code, jump[0], jump[1], k)
    return encoded


@functools.lru_cache(maxsize=None)
def _bwrap_plan(bwrap: str, python: str, euid: int) -> _BwrapPlan | str:
    """The bwrap command line for this interpreter, self-tested once; else why bwrap cannot sandbox here."""
    version = _bwrap_version(bwrap)
    if version and version < (0, 5):  # --perms, which makes the working directory and bound parents usable
        return f"{bwrap} is version {'.'.join(map(str, version))}; the sandbox needs bubblewrap 0.5 or newer"
    filesystem = _filesystem_options(python)
    session = ["--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    for key, value in _SANDBOX_ENV.items():
        session += ["--setenv", key, value]
    disable_userns = ["--disable-userns"] if version >= (0, 8) else []  # else a nested user namespace stays open
    candidates = []
    if euid == 0:
        # Root keeps the host's user namespace so that uid 65534 (nobody on Debian) is unprivileged outside too
        # (NPROC binds, root's files are out of reach); only CAP_SETUID/CAP_SETGID survive, for the bootstrap's
        # switch, which clears them.
        candidates.append((["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                            "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"],
                           f"bwrap: uid {_SANDBOX_UID} (also outside, not root)", _SANDBOX_UID, True))
    userns_root = " (root outside: the process limit is not enforced)" if euid == 0 else f" (uid {euid} outside)"
    candidates.append((["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                        "--unshare-cgroup-try", *disable_userns, "--uid", str(_SANDBOX_UID),
                        "--gid", str(_SANDBOX_UID), "--cap-drop", "ALL"],
                       f"bwrap: uid {_SANDBOX_UID} in a user namespace{userns_root}", None,
                       not _kernel_counts_nproc_per_user_namespace()))
    # --size (bubblewrap 0.7) caps the tmpfs; a setuid bwrap refuses it, so try without before giving up
    sizes = [True, False] if version >= (0, 7) else [False]
    seccomp = _seccomp_filter() is not None
    failures = []
    for sized in sizes:
        for namespaces, who, drop_uid, counts_host in candidates:
            argv = (bwrap, *namespaces, *session, *filesystem)
            workdir = "tmpfs working directory" + ("" if sized else " (not size-capped: bwrap without --size)")
            nested = ("no nested user namespaces" if seccomp or "--disable-userns" in namespaces
                      else "nested user namespaces possible")
            description = (f"{who}, new pid/net/ipc/uts/mount namespaces, {nested}, no capabilities, read-only "
                           f"system, {workdir}")
            plan = _BwrapPlan(argv, description, drop_uid, counts_host, sized, seccomp)
            try:
                result = _run_in_bwrap(plan, python, _SELF_TEST, {}, None,
                                       SandboxLimits(timeout_s=30, audit_hook=False))
            except OSError as error:
                failures.append(str(error))
                continue
            expected_uid = str(drop_uid if drop_uid is not None else _SANDBOX_UID)
            if result.ok and result.stdout.split()[:1] == [expected_uid] and _WORKDIR in result.stdout:
                return plan
            failures.append((result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1])
    return f"{bwrap} cannot create a sandbox here ({'; '.join(dict.fromkeys(failures))})"


def _resolve(limits: SandboxLimits) -> tuple[str, _BwrapPlan | None, str]:
    """(mode, bwrap plan or None for the weak guard, description); SandboxUnavailable when nothing may run."""
    mode = _isolation_mode(limits)
    python = _python(limits)
    hook = ", rlimits" + (", audit hook" if limits.audit_hook else "")
    if mode == "weak":
        _, description, _ = _launcher(python, limits.namespaces, limits.drop_to_nobody)
        return mode, None, f"weak (in-process guard, opted in): {description}{hook}"
    bwrap = _find_bwrap()
    if bwrap is None:
        raise SandboxUnavailable("r1lab.sandbox refuses to run model-written code: bubblewrap (bwrap) is not "
                                 "installed. " + _opt_in_hint())
    plan = _bwrap_plan(bwrap, python, os.geteuid())
    if isinstance(plan, str):
        raise SandboxUnavailable(f"r1lab.sandbox refuses to run model-written code: {plan}. A container may "
                                 "forbid the namespaces bwrap needs. Fix that, or: " + _opt_in_hint())
    return mode, plan, plan.description + hook


def sandbox_isolation(limits: SandboxLimits | None = None) -> str:
    """One line on what `run_python` will use with these limits, e.g. "bwrap: uid 65534 (also outside, not root), ...".

    Raises `SandboxUnavailable` (with the fix) when it would refuse, so a run that uses the code reward can call it
    at its start and stop there rather than at its first reward.
    """
    return _resolve(limits or SandboxLimits())[2]


def bwrap_available(limits: SandboxLimits | None = None) -> bool:
    """Whether bwrap is installed and passed its self-test for this interpreter (tests skip on this)."""
    bwrap = _find_bwrap()
    return bwrap is not None and not isinstance(_bwrap_plan(bwrap, _python(limits or SandboxLimits()),
                                                            os.geteuid()), str)


@functools.lru_cache(maxsize=None)
def _launcher(python: str, namespaces: bool, drop: bool) -> tuple[tuple[str, ...], str, bool]:
    """Weak guard: the command prefix that wraps the interpreter, a description of it, and whether it drops to nobody.

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


def _bootstrap_argv(python: str, limits: SandboxLimits, nproc: int, inputs: str, drop_uid: int | None,
                    program: str) -> list[str]:
    cpu_s = math.ceil(limits.timeout_s) + 1
    return [python, "-I", "-B", "-c", _BOOTSTRAP,
            f"memory_mb={limits.memory_mb}", f"cpu_s={cpu_s}", f"file_size_mb={limits.file_size_mb}",
            f"max_open_files={limits.max_open_files}", f"nproc={nproc}", f"audit_hook={int(limits.audit_hook)}",
            f"inputs={inputs}", f"uid={'' if drop_uid is None else drop_uid}",
            f"gid={'' if drop_uid is None else _SANDBOX_UID}", program]


def _supervise(argv: list[str], cwd: str, env: dict, stdin_path: str | None, scratch: str, limits: SandboxLimits,
               description: str, started: float, pass_fds: tuple[int, ...] = ()) -> SandboxResult:
    """Run ``argv`` in its own session with output to files, kill everything at the timeout, read the output back."""
    out_path, err_path = os.path.join(scratch, ".stdout"), os.path.join(scratch, ".stderr")
    # Output goes to files, not pipes: RLIMIT_FSIZE bounds them and nothing can fill the parent's memory.
    with open(out_path, "wb") as out, open(err_path, "wb") as err, \
            open(stdin_path if stdin_path is not None else os.devnull, "rb") as inp:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=inp, stdout=out, stderr=err,
                                   start_new_session=True, close_fds=True, pass_fds=pass_fds)
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
        isolation=description,
    )


def _write_inputs(folder: str, code: str, files: dict[str, str] | None) -> None:
    for name, text in {**(files or {}), "program.py": code}.items():
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"sandbox file names are plain names in the working directory, got {name!r}")
        with open(os.path.join(folder, name), "w", encoding="utf-8") as file:
            file.write(text)


def _run_in_bwrap(plan: _BwrapPlan, python: str, code: str, files: dict[str, str] | None, stdin: str | None,
                  limits: SandboxLimits, description: str = "") -> SandboxResult:
    started = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="r1lab-sandbox-")  # 0700: stdout, stderr, stdin; never bound
    try:
        inputs = os.path.join(scratch, "inputs")
        os.mkdir(inputs, 0o700)
        _write_inputs(inputs, code, files)
        stdin_path = None
        if stdin is not None:
            stdin_path = os.path.join(scratch, ".stdin")
            with open(stdin_path, "w", encoding="utf-8") as file:
                file.write(stdin)
        if plan.nproc_counts_host_tasks:  # the limit counts the uid's tasks everywhere: allow that many more
            nproc = _user_tasks(plan.drop_uid if plan.drop_uid is not None else os.getuid()) + limits.max_processes
        else:  # counted in the new user namespace only: bwrap's reaper and the interpreter are there already
            nproc = limits.max_processes + 2
        if plan.drop_uid is None and os.geteuid() == 0:
            nproc = 0  # uid 0 outside: the kernel ignores the limit
        sandbox = [*plan.argv, "--ro-bind", inputs, _INPUTS,
                   *(["--size", str(limits.disk_mb * 1024 * 1024)] if plan.sized_tmpfs else []),
                   "--perms", "1777", "--tmpfs", _WORKDIR,
                   "--remount-ro", "/", "--chdir", _WORKDIR]
        pass_fds = ()
        if plan.seccomp:  # bwrap reads the filter from a descriptor and installs it just before the interpreter
            filter_path = os.path.join(scratch, "seccomp.bpf")
            with open(filter_path, "wb") as file:
                file.write(_seccomp_filter())
            pass_fds = (os.open(filter_path, os.O_RDONLY),)
            sandbox += ["--seccomp", str(pass_fds[0])]
        argv = sandbox + _bootstrap_argv(python, limits, nproc, _INPUTS, plan.drop_uid, "program.py")
        try:
            return _supervise(argv, "/", {"PATH": "/usr/bin:/bin"}, stdin_path, scratch, limits,
                              description or plan.description, started, pass_fds)
        finally:
            for fd in pass_fds:
                os.close(fd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_weak(python: str, code: str, files: dict[str, str] | None, stdin: str | None, limits: SandboxLimits,
              description: str) -> SandboxResult:
    prefix, _, drops = _launcher(python, limits.namespaces, limits.drop_to_nobody)
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="r1lab-sandbox-")
    try:
        _write_inputs(workdir, code, files)
        stdin_path = None
        if stdin is not None:
            stdin_path = os.path.join(workdir, ".stdin")
            with open(stdin_path, "w", encoding="utf-8") as file:
                file.write(stdin)
        if drops:
            uid, gid = _nobody()
            for name in os.listdir(workdir):
                os.chown(os.path.join(workdir, name), uid, gid)
            os.chown(workdir, uid, gid)
        # RLIMIT_NPROC binds every user but root: allow max_processes more tasks than the user runs now
        runs_as = _nobody()[0] if drops else os.getuid()
        nproc = _user_tasks(runs_as) + limits.max_processes if runs_as != 0 else 0
        argv = [*prefix, *_bootstrap_argv(python, limits, nproc, "", None, os.path.join(workdir, "program.py"))]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        return _supervise(argv, workdir, env, stdin_path, workdir, limits, description, started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_python(code: str, *, stdin: str | None = None, limits: SandboxLimits | None = None,
               files: dict[str, str] | None = None) -> SandboxResult:
    """Run ``code`` as a Python program under the sandbox; ``files`` are written into its working directory first.

    Raises `SandboxUnavailable` when bwrap cannot be used and the weak guard was not chosen explicitly.
    """
    limits = limits or SandboxLimits()
    _, plan, description = _resolve(limits)
    if plan is None:
        return _run_weak(_python(limits), code, files, stdin, limits, description)
    return _run_in_bwrap(plan, _python(limits), code, files, stdin, limits, description)
