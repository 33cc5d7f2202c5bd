"""Run one approved algorithm over one grant's files in a process sandbox (可用不可见).

`run` starts the algorithm — one Python file — under bubblewrap (Debian's ``bubblewrap``,
``/usr/bin/bwrap``), with

- **every namespace unshared**: no network (only a loopback that nothing listens on), its own
  PIDs, IPC, hostname, mounts and user; ``--die-with-parent``, ``--new-session`` (no terminal to
  push keystrokes into), ``--clearenv``;
- **a fixed runtime**: Debian's ``/usr/bin/python3`` run with ``-I -S`` (isolated: no
  ``PYTHON*`` variables, no user site; no ``site``, so no ``dist-packages`` and no
  ``sitecustomize``). The *allowed library set* is that interpreter's standard library
  (``/usr/lib/python3.X``: ``csv``, ``json``, ``statistics``, ``math``, ``decimal``,
  ``collections``, ``itertools``, ``datetime``, …) and the system's shared libraries it loads,
  all read-only, plus, when the caller passes ``libraries``, one read-only folder of pure-Python
  packages at ``/job/lib``. Nothing else of the host is there: no ``/etc``, no ``/home`` or
  ``/root``, no project, no ``.venv``, no state folder;
- **the revision's files read-only** at ``/data/inputs/<name>`` and the buyer's parameters at
  ``/data/inputs/params.json``; the algorithm itself at ``/job/algorithm.py``;
- **a size-limited output folder**: ``/data/output`` is a tmpfs of ``output_bytes``
  (``bwrap --size``), so writing more fails with ENOSPC inside; ``/tmp`` is a tmpfs of
  `TMP_BYTES`; everything else is read-only (``--remount-ro /`` and ``/dev``);
- **an unprivileged uid**: 65534 inside. Run as root, bubblewrap would map that uid to host
  root, whose processes Linux exempts from ``RLIMIT_NPROC`` and which owns every root file the
  sandbox could ever reach; so as root, bubblewrap itself is started as host uid/gid 65534
  (``nobody``/``nogroup``, no supplementary groups). bubblewrap must then reach and read each
  input as ``nobody``, so the inputs are staged for the run in a folder of root's under /tmp
  (0711: passable, not listable) under random names: hard links of files everyone may read,
  read-only copies of the others (a 0600 file in the state folder); the folder goes when the
  run ends;
- **rlimits** (CPU, address space, open files, file size, processes), set inside the sandbox
  by the launcher (`exchange.compute.launcher`, the sandbox's init) on the algorithm's process
  before the algorithm starts;
- **a seccomp filter** (`seccomp_program`): sockets, namespace, mount, tracing, keyring, BPF,
  io_uring and module calls fail with EPERM;
- **a wall-clock timer**: at ``wall_seconds`` the job is stopped (`_stop`): its init kills
  every other process and exits; failing that, init is killed, which ends the PID namespace;
  failing that, bubblewrap's process group.

After the run, the files the algorithm left in ``/data/output`` are copied into
``<workdir>/output``: regular files only; a link, a folder or anything else is not copied and
is named in `Outcome.output_refused` (`exchange.compute.outputs.check` refuses the result
then). What the output may *contain* is `exchange.compute.outputs`' business.

How each limit is told (`classify`):

- **CPU**: SIGXCPU at ``cpu_seconds`` (the hard limit, a second later, is SIGKILL): the job
  is ``timed_out`` with ``limit="cpu"``. ``RLIMIT_CPU`` limits each process; a job of many
  processes can use at most ``wall_seconds`` times the cores in all. `Outcome.cpu_seconds` is
  what the job's processes used, from the kernel's accounting of the reaped process tree
  (``wait4`` on bubblewrap, which reaps the launcher, which reaps the rest);
- **wall clock**: the host's timer: ``timed_out`` with no limit named;
- **memory** (``RLIMIT_AS``): the allocation fails, Python raises MemoryError, the launcher
  exits `launcher.EXIT_MEMORY`;
- **processes** (``RLIMIT_NPROC``): fork or a new thread fails (BlockingIOError, or
  RuntimeError "can't start new thread"), `launcher.EXIT_PIDS`. ``pids`` counts the job's
  processes and threads, the launcher included. Linux counts ``RLIMIT_NPROC`` per uid *and
  user namespace*, and each job has a user namespace of its own, so concurrent jobs under the
  same uid 65534 do not share the count, and nothing else running as ``nobody`` eats into it;
- **output**: ENOSPC in the output tmpfs, or EFBIG beyond ``RLIMIT_FSIZE`` (also
  ``output_bytes``), `launcher.EXIT_OUTPUT`; or, whatever the job said, files listed for
  copying that add up to more than ``output_bytes``.

These exit codes come from the launcher, which the algorithm shares a process with (its
diagnosis, not a boundary); the limits themselves are the kernel's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from exchange.compute import launcher

Status = Literal["exited", "timed_out", "limit_exceeded", "failed_platform"]
LimitName = Literal["memory", "pids", "output", "cpu"]

BWRAP: Final = Path("/usr/bin/bwrap")
SYSTEM_PYTHON: Final = Path("/usr/bin/python3")
SANDBOX_UID: Final = 65534
SANDBOX_GID: Final = 65534
TMP_BYTES: Final = 16 * 2**20
STDERR_TAIL_BYTES: Final = 4096
KILL_GRACE_SECONDS: Final = 1.0
PARAMS_NAME: Final = "params.json"
MAX_OUTPUT_ENTRIES: Final = 256
_STREAM_SLACK: Final = 64 * 1024  # entry headers, on top of the output's bytes
_READ_BYTES: Final = 1 << 16
_SANDBOX_TMP: Final = "/tmp"  # noqa: S108 - inside the sandbox: a small tmpfs, not the host's
# Where inputs are staged for nobody to bind (running as root): a folder everyone may pass,
# whatever TMPDIR says; the staging folder made in it is root's, 0711, random-named.
_STAGING_ROOT: Final = "/tmp"  # noqa: S108

# Calls that fail with EPERM inside. Sockets: no network, not even AF_UNIX between the job's
# own processes. Namespaces and mounts: no way to rearrange what bubblewrap set up. The rest:
# tracing other processes, the kernel keyring, BPF, perf, io_uring (which can open sockets
# without socket(2)), modules, clocks, and the usual container-escape calls.
DENIED_SYSCALLS: Final = (
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd", "personality",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
)  # fmt: skip
# clone(2) with any of these flags would make a namespace; clone3 (whose flags sit in a struct
# seccomp cannot read) answers ENOSYS, so the C library falls back to clone.
_NAMESPACE_FLAGS: Final = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one job may use; the plan sets them."""

    cpu_seconds: int = 10  # CPU of each process (RLIMIT_CPU)
    wall_seconds: float = 15.0  # from start to the end of the whole sandbox
    memory_bytes: int = 512 * 2**20  # address space of each process (RLIMIT_AS)
    pids: int = 32  # processes and threads at once, the launcher's included (RLIMIT_NPROC)
    output_bytes: int = 1 * 2**20  # the output folder's size, and any one file's (RLIMIT_FSIZE)
    open_files: int = 64  # descriptors of each process (RLIMIT_NOFILE)

    def __post_init__(self) -> None:
        if self.cpu_seconds < 1 or self.wall_seconds <= 0:
            raise ValueError("cpu_seconds must be ≥ 1 and wall_seconds > 0")
        if self.memory_bytes < 64 * 2**20:
            raise ValueError("memory_bytes must be ≥ 64 MiB: the interpreter needs about 20")
        if self.pids < 3:
            raise ValueError("pids must be ≥ 3: the sandbox's init and the launcher count")
        if self.output_bytes < 1 or self.open_files < 8:
            raise ValueError("output_bytes must be ≥ 1 and open_files ≥ 8")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended.

    ``timed_out`` covers both clocks: ``limit`` is ``"cpu"`` when the CPU limit stopped it
    (SIGXCPU, or SIGKILL at the hard limit), None when the wall clock did. ``limit_exceeded``
    names ``memory``, ``pids`` or ``output``. ``exited`` is an ordinary end: ``exit_code``, or
    ``signal`` when a signal ended it. ``failed_platform``: the sandbox could not run the job
    (``stderr_tail`` says why); the job is not to blame.

    ``stderr_tail`` is the last 4 KiB the algorithm wrote to stderr (its stdout is discarded).
    It is a channel out of the sandbox the output checks do not cover: an algorithm can print
    input rows there. Show it to the buyer only as far as the plan allows.

    ``output_refused`` names what the algorithm left in ``/data/output`` that was not copied
    (links, folders, devices, unreadable listings). The names are the algorithm's choice, as
    stderr is: for the operator, not for the buyer.
    """

    status: Status
    limit: LimitName | None
    exit_code: int | None
    signal: int | None
    cpu_seconds: float
    wall_seconds: float
    stderr_tail: str
    output_refused: tuple[str, ...] = ()


class SandboxUnavailable(Exception):
    """This machine cannot run the sandbox (no bubblewrap, no system Python, no libseccomp)."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """The fixed runtime bound into every sandbox."""

    python: Path  # the interpreter's real file, e.g. /usr/bin/python3.11
    stdlib: Path  # /usr/lib/python3.X
    shared_libraries: tuple[Path, ...]  # /usr/lib/<multiarch>, /usr/lib64


def platform_problem() -> str | None:
    """Why the sandbox cannot run on this machine (one line naming what to install), or None.

    Static checks only; a kernel that refuses unprivileged user namespaces shows up as a
    ``failed_platform`` outcome with bubblewrap's message.
    """
    try:
        system_runtime()
        seccomp_program()
    except SandboxUnavailable as problem:
        return str(problem)
    return None


@functools.cache
def system_runtime() -> Runtime:
    if not os.access(BWRAP, os.X_OK):
        raise SandboxUnavailable(f"{BWRAP} is missing (apt-get install bubblewrap)")
    python = SYSTEM_PYTHON.resolve()
    stdlib = Path("/usr/lib") / python.name
    if not python.is_file() or not (stdlib / "os.py").is_file():
        raise SandboxUnavailable(f"no Debian Python at {SYSTEM_PYTHON} (apt-get install python3)")
    multiarch = Path("/usr/lib") / f"{os.uname().machine}-linux-gnu"
    shared = tuple(path for path in (multiarch, Path("/usr/lib64")) if path.is_dir())
    return Runtime(python=python, stdlib=stdlib, shared_libraries=shared)


@functools.cache
def seccomp_program() -> bytes:
    """The seccomp filter as classic BPF, as ``bwrap --seccomp`` loads it."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, RuntimeError) as error:
        raise SandboxUnavailable(f"libseccomp cannot be loaded: {error}") from error
    denied = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        rules.add_rule(denied, name)
    for flag in _NAMESPACE_FLAGS:
        rules.add_rule(denied, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    fd = os.memfd_create("dataex-seccomp")
    with os.fdopen(fd, "w+b") as exported:
        rules.export_bpf(exported)
        exported.seek(0)
        return exported.read()


@functools.cache
def _launcher_source() -> bytes:
    return Path(launcher.__file__).read_bytes()


def run(
    program: Path,
    inputs: Mapping[str, Path],
    params: bytes,
    limits: Limits,
    workdir: Path,
    *,
    libraries: Path | None = None,
) -> Outcome:
    """Run ``program`` over ``inputs`` in a fresh sandbox, and copy its output out.

    ``workdir`` is an existing folder private to the caller, one per job; the output lands in
    ``workdir/output``, which must not exist yet. Input names are plain file names;
    ``params.json`` is taken. ``libraries``, if given, is a folder of pure-Python packages that
    everyone may read and reach (uid 65534 binds it when running as root), bound read-only at
    ``/job/lib`` and put on the algorithm's ``sys.path``.

    The wall clock runs from bubblewrap's start: staging the inputs is not the job's time.

    Never raises for what the algorithm does; raises ValueError for a bad input name or an
    input that is not a file, OSError when the program cannot be read, and returns
    ``failed_platform`` when the sandbox cannot run here.
    """
    _check_names(inputs)
    output_dir = workdir / "output"
    output_dir.mkdir(mode=0o700)
    try:
        runtime = system_runtime()
        bpf = seccomp_program()
    except SandboxUnavailable as problem:
        return _platform_failure(str(problem))
    with _Descriptors() as fds, _staging() as staging:
        job = _prepare(fds, runtime, bpf, program, inputs, params, limits, staging, libraries)
        started = time.monotonic()
        try:
            process = _spawn(job.argv, fds.passed)
        except OSError as error:
            return _platform_failure(f"bubblewrap did not start: {error}")
        fds.close_passed()
        watched = _watch(process, job, limits, started)
    return _conclude(watched, limits, output_dir, time.monotonic() - started)


@contextlib.contextmanager
def _staging() -> Iterator[Path | None]:
    """A folder for inputs bubblewrap must reach as nobody (only when running as root)."""
    if os.geteuid() != 0:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="dataex-sandbox-", dir=_STAGING_ROOT))
    try:
        folder.chmod(0o711)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_names(inputs: Mapping[str, Path]) -> None:
    for name in inputs:
        if (
            not name
            or name in {".", "..", PARAMS_NAME}
            or "/" in name
            or "\0" in name
            or len(os.fsencode(name)) > 255
        ):
            raise ValueError(f"{name!r} cannot name an input: a plain file name, not params.json")


class _Descriptors:
    """The descriptors one run opens: those bubblewrap inherits, and our ends of its pipes.

    Each is closed exactly once (a descriptor closed twice could be another thread's by then).
    """

    def __init__(self) -> None:
        self.passed: list[int] = []
        self._open: set[int] = set()

    def __enter__(self) -> _Descriptors:
        return self

    def __exit__(self, *_: object) -> None:
        for fd in list(self._open):
            self.close(fd)

    def own(self, fd: int) -> int:
        self._open.add(fd)
        return fd

    def pass_on(self, fd: int) -> int:
        self.passed.append(fd)
        return self.own(fd)

    def close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_passed(self) -> None:
        for fd in self.passed:
            self.close(fd)


@dataclass(slots=True)
class _Job:
    argv: list[str]
    stream: int  # our end of the launcher's stream
    info: int  # our end of bubblewrap's --info-fd


def _prepare(
    fds: _Descriptors,
    runtime: Runtime,
    bpf: bytes,
    program: Path,
    inputs: Mapping[str, Path],
    params: bytes,
    limits: Limits,
    staging: Path | None,
    libraries: Path | None,
) -> _Job:
    binds: list[str] = []
    for name, path in sorted(inputs.items()):
        binds += ["--ro-bind", str(_stage_input(name, path, staging)), f"/data/inputs/{name}"]
    if libraries is not None:
        binds += ["--ro-bind", str(libraries), launcher.LIBRARIES]
    for data, where in (
        (params, f"/data/inputs/{PARAMS_NAME}"),
        (program.read_bytes(), launcher.PROGRAM),
        (_launcher_source(), "/job/launcher.py"),
    ):
        binds += ["--ro-bind-data", str(fds.pass_on(_memfd(data))), where]
    stream_read, stream_write = os.pipe()
    info_read, info_write = os.pipe()
    fds.own(stream_read)
    fds.own(info_read)
    fds.pass_on(stream_write)
    fds.pass_on(info_write)
    seccomp_fd = fds.pass_on(_memfd(bpf))
    argv = [
        *_bwrap_options(runtime, limits),
        *binds,
        "--remount-ro", "/",
        "--remount-ro", "/dev",
        "--info-fd", str(info_write),
        "--seccomp", str(seccomp_fd),
        "--",
        "/usr/bin/python3", "-I", "-S", "/job/launcher.py",
        str(stream_write), str(limits.cpu_seconds), str(limits.memory_bytes), str(limits.pids),
        str(limits.open_files), str(limits.output_bytes),
    ]  # fmt: skip
    return _Job(argv=argv, stream=stream_read, info=info_read)


def _bwrap_options(runtime: Runtime, limits: Limits) -> list[str]:
    """Namespaces, identity, environment and the fixed part of the file system."""
    options = [
        str(BWRAP),
        "--unshare-all", "--as-pid-1", "--die-with-parent", "--new-session", "--clearenv",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--hostname", "sandbox",
        "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", _SANDBOX_TMP,
        "--setenv", "TMPDIR", _SANDBOX_TMP, "--setenv", "PATH", "/usr/bin",
        "--ro-bind", str(runtime.python), f"/usr/bin/{runtime.python.name}",
        "--symlink", runtime.python.name, "/usr/bin/python3",
        "--ro-bind", str(runtime.stdlib), str(runtime.stdlib),
    ]  # fmt: skip
    for folder in runtime.shared_libraries:
        options += ["--ro-bind", str(folder), str(folder)]
    options += [
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(TMP_BYTES), "--tmpfs", _SANDBOX_TMP,
        "--size", str(limits.output_bytes), "--tmpfs", launcher.OUTPUT_DIR,
        "--chdir", _SANDBOX_TMP,
    ]  # fmt: skip
    return options


def _stage_input(name: str, path: Path, staging: Path | None) -> Path:
    """The path bubblewrap binds for an input.

    Running as root, bubblewrap runs as nobody and must be able to reach and read the file:
    it goes into ``staging`` (root's, 0711: passable, not listable; under /tmp, which everyone
    may pass), as a hard link when the file is readable by everyone and on the same file
    system, else as a read-only copy.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"input {name!r} ({path}) does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"input {name!r} ({path}) is not a regular file")
    if staging is None:
        return path
    staged = staging / secrets.token_hex(16)
    if info.st_mode & stat.S_IROTH and info.st_dev == staging.stat().st_dev:
        os.link(path, staged)
    else:
        shutil.copyfile(path, staged)  # sendfile(2): no pass through Python's memory
        staged.chmod(0o444)
    return staged


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("dataex-sandbox")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)  # bubblewrap reads from the current offset
    return fd


def _spawn(argv: list[str], passed: list[int]) -> subprocess.Popen[bytes]:
    # As root, bubblewrap itself runs as nobody: see the module's docstring.
    dropping = os.geteuid() == 0
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=passed,
        env={},
        cwd="/",
        umask=0o077,
        start_new_session=True,
        user=SANDBOX_UID if dropping else None,
        group=SANDBOX_GID if dropping else None,
        extra_groups=[] if dropping else None,
    )


@dataclass(slots=True)
class _Watched:
    exit_code: int  # bubblewrap's: the launcher's code, 128 + n for a signal n
    cpu_seconds: float
    timed_out: bool
    stderr: bytes
    stream: bytes
    stream_overflow: bool


def _watch(process: subprocess.Popen[bytes], job: _Job, limits: Limits, started: float) -> _Watched:
    """Collect stderr and the output stream until the job ends or its wall clock runs out."""
    assert process.stderr is not None
    pipes = _Pipes(process.stderr.fileno(), job, limits)
    deadline = started + limits.wall_seconds
    timed_out = False
    with selectors.DefaultSelector() as selector:
        bwrap = os.pidfd_open(process.pid)
        try:
            for fd in (*pipes.fds, bwrap):
                selector.register(fd, selectors.EVENT_READ)
            stops = 0  # how far a job out of time has been stopped (`_stop`)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if stops == _STOP_STEPS:
                        break
                    timed_out = True
                    _stop(stops, pipes.init, process.pid)
                    stops += 1
                    deadline = time.monotonic() + KILL_GRACE_SECONDS / _STOP_STEPS
                    continue
                for key, _ in selector.select(remaining):
                    if key.fd == bwrap or not pipes.read(key.fd):
                        selector.unregister(key.fd)
        finally:
            os.close(bwrap)
            pipes.close()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    return _Watched(
        exit_code=process.returncode,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        timed_out=timed_out,
        stderr=bytes(pipes.stderr),
        stream=bytes(pipes.stream),
        stream_overflow=pipes.overflow,
    )


class _Pipes:
    """What one job's pipes bring: the tail of stderr, the launcher's stream (up to its cap),
    and bubblewrap's --info-fd (which gives the sandbox's init)."""

    def __init__(self, stderr: int, job: _Job, limits: Limits) -> None:
        self.fds = (stderr, job.stream, job.info)
        self.stderr = bytearray()
        self.stream = bytearray()
        self.info = bytearray()
        self.overflow = False
        self.cap = limits.output_bytes + _STREAM_SLACK + len(launcher.STARTED)
        self.init: int | None = None  # a pidfd of the sandbox's init, once bubblewrap told it

    def read(self, fd: int) -> bool:
        """Read what is there; False at the end of the pipe."""
        chunk = os.read(fd, _READ_BYTES)
        stderr, stream, info = self.fds
        if not chunk:
            if fd == info:
                self.init = _open_init(bytes(self.info))
            return False
        if fd == stderr:
            self.stderr += chunk
            del self.stderr[:-STDERR_TAIL_BYTES]
        elif fd == stream:
            self.overflow |= len(self.stream) + len(chunk) > self.cap
            if not self.overflow:
                self.stream += chunk
        else:
            self.info += chunk
        return True

    def close(self) -> None:
        if self.init is not None:
            os.close(self.init)


def _open_init(info: bytes) -> int | None:
    """A pidfd of the sandbox's init, from bubblewrap's --info-fd JSON."""
    import json

    try:
        pid = json.loads(info)["child-pid"]
        return os.pidfd_open(int(pid))
    except (ValueError, KeyError, TypeError, OSError):
        return None


_STOP_STEPS: Final = 3


def _stop(step: int, init: int | None, bwrap_pid: int) -> None:
    """Stop a job whose wall clock ran out, one step at a time, a third of the grace apart:

    0. SIGTERM to the sandbox's init (the launcher): it kills every other process of the
       namespace and reaps them, so the CPU they used is still counted, then exits;
    1. SIGKILL to init: the kernel kills the whole namespace (reaping it unaccounted);
    2. SIGKILL to bubblewrap's process group (``--die-with-parent`` takes the sandbox with it).

    Without init's pid (bubblewrap never said it), every step is the last.
    """
    with contextlib.suppress(ProcessLookupError):
        if init is not None and step < _STOP_STEPS - 1:
            signal.pidfd_send_signal(init, signal.SIGTERM if step == 0 else signal.SIGKILL)
        else:
            os.killpg(bwrap_pid, signal.SIGKILL)


def _conclude(watched: _Watched, limits: Limits, output_dir: Path, wall: float) -> Outcome:
    started = watched.stream.startswith(launcher.STARTED)
    listing = watched.stream[len(launcher.STARTED) :] if started else b""
    refused: tuple[str, ...] = ()
    overflow = watched.stream_overflow
    if started and not watched.timed_out and not overflow:
        copied = _copy_output(listing, output_dir, limits.output_bytes)
        overflow = copied is None
        refused = copied or ()
    status, limit, exit_code, sig = classify(
        exit_code=watched.exit_code,
        started=started,
        timed_out=watched.timed_out,
        output_overflow=overflow,
        cpu_seconds=watched.cpu_seconds,
        limits=limits,
    )
    return Outcome(
        status=status,
        limit=limit,
        exit_code=exit_code,
        signal=sig,
        cpu_seconds=watched.cpu_seconds,
        wall_seconds=wall,
        stderr_tail=watched.stderr.decode("utf-8", "replace"),
        output_refused=refused,
    )


def classify(
    *,
    exit_code: int,
    started: bool,
    timed_out: bool,
    output_overflow: bool,
    cpu_seconds: float,
    limits: Limits,
) -> tuple[Status, LimitName | None, int | None, int | None]:
    """(status, limit, exit code, signal) from how bubblewrap ended.

    bubblewrap exits with the launcher's code, or 128 + n when a signal n ended it; the
    launcher's codes from 120 up name a limit (`exchange.compute.launcher`).
    """
    sig = exit_code - 128 if 128 < exit_code < 128 + 65 else None
    if timed_out:
        return "timed_out", None, None, signal.SIGKILL
    if not started:
        return "failed_platform", None, exit_code, sig
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_seconds >= limits.cpu_seconds):
        return "timed_out", "cpu", None, sig
    if exit_code == launcher.EXIT_MEMORY:
        return "limit_exceeded", "memory", exit_code, None
    if exit_code == launcher.EXIT_PIDS:
        return "limit_exceeded", "pids", exit_code, None
    if exit_code == launcher.EXIT_OUTPUT or output_overflow or sig == signal.SIGXFSZ:
        return "limit_exceeded", "output", exit_code if sig is None else None, sig
    if exit_code == launcher.EXIT_LAUNCHER:
        return "failed_platform", None, exit_code, None
    if sig is not None:
        return "exited", None, None, sig
    return "exited", None, exit_code, None


def _copy_output(listing: bytes, output_dir: Path, max_bytes: int) -> tuple[str, ...] | None:
    """Write the listed regular files into ``output_dir``; names of what was not copied.

    None when the files add up to more than ``max_bytes``. A listing that does not parse, or
    does not end with the launcher's END, copies nothing: a job whose launcher never listed its
    output (it left with ``os._exit``) has none.
    """
    entries = list(_entries(listing))
    if not entries or entries[-1] is not None:
        return ("(the output listing is incomplete)",) if listing else ()
    files = [entry for entry in entries if entry is not None]
    if len(files) > MAX_OUTPUT_ENTRIES:
        return ("(too many entries in the output folder)",)
    if sum(len(content) for _, kind, content in files if kind == "file") > max_bytes:
        return None
    refused: list[str] = []
    for name, kind, content in files:
        shown = name.decode("utf-8", "backslashreplace")
        if kind != "file" or not _plain_name(name):
            refused.append(f"{shown} ({kind})")
            continue
        fd = os.open(
            output_dir / os.fsdecode(name),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        with os.fdopen(fd, "wb") as out:
            out.write(content)
    return tuple(refused)


def _entries(listing: bytes) -> Iterator[tuple[bytes, str, bytes] | None]:
    """(name, kind, content) for each listed entry, then None for END; stops at garbage."""
    at = 0
    while at < len(listing):
        end = listing.find(b"\n", at)
        if end < 0:
            return
        line = listing[at : end + 1]
        at = end + 1
        if line == launcher.END:
            yield None
            return
        try:
            kind_bytes, size_text, hex_name = line.rstrip(b"\n").split(b" ")
            kind, size, name = kind_bytes.decode(), int(size_text), bytes.fromhex(hex_name.decode())
        except ValueError:
            return
        if kind not in {"file", "link", "folder", "other"} or size < 0:
            return
        content = listing[at : at + size] if kind == "file" else b""
        if len(content) != (size if kind == "file" else 0):
            return
        at += len(content)
        yield name, kind, content


def _plain_name(name: bytes) -> bool:
    return bool(name) and name not in {b".", b".."} and b"/" not in name and b"\0" not in name


def _platform_failure(reason: str) -> Outcome:
    return Outcome(
        status="failed_platform",
        limit=None,
        exit_code=None,
        signal=None,
        cpu_seconds=0.0,
        wall_seconds=0.0,
        stderr_tail=reason,
    )
