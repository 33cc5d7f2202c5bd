"""The trusted start of every sandboxed job: it runs *inside* the sandbox, as its init.

`exchange.compute.sandbox` binds this file read-only at ``/job/launcher.py`` and starts it as
process 1 of the sandbox's PID namespace (``bwrap --as-pid-1``):
``/usr/bin/python3 -I -S /job/launcher.py <stream fd> <cpu> <memory> <pids> <files> <fsize>``,
under Debian's Python, which has only its standard library: so this module imports nothing but
the standard library, and nothing of the project.

As init, it

1. closes every descriptor it inherited except stdin/stdout/stderr and the *stream* (a pipe the
   host reads), and writes `STARTED` on it, so the host can tell a job that ran from a sandbox
   that never came up;
2. forks the algorithm's process, which sets the job's rlimits on itself — CPU seconds, address
   space, open files, file size, processes — and cannot raise them again. The process limit is
   set inside because Linux counts ``RLIMIT_NPROC`` per user *and user namespace*: it counts
   this job's processes only, whatever else runs as the same uid (another job included);
3. there runs the algorithm (``/job/algorithm.py``) as ``__main__``, and turns the exceptions
   that mean "a limit was reached" into exit codes the host classifies: `EXIT_MEMORY`
   (MemoryError under the address-space limit), `EXIT_PIDS` (fork or thread creation refused
   under the process limit), `EXIT_OUTPUT` (no space left in ``/data/output`` or ``/tmp``, or a
   file beyond the file-size limit). Any other uncaught exception prints its traceback and
   exits 1; the algorithm's own exit codes pass through when they are 0 to 119 (others become 1),
   so codes from 120 up mean the launcher, and 128 + n a signal n;
4. meanwhile reaps every process that ends (orphans come to init), until the algorithm's
   process ends; then kills whatever it left running, and lists ``/data/output`` onto the
   stream: one line per entry, ``<kind> <size> <name as hex of its bytes>`` (kind ``file``,
   ``link``, ``folder`` or ``other``), followed, for a regular file, by its bytes; then
   `END`. Nothing is followed: a link is reported as a link. Then it exits with the
   algorithm's code, and the kernel ends the namespace.

Being init is also what lets the host count the job's CPU: bubblewrap's own init would leave
its accounting unreaped, while this one is reaped by bubblewrap, which the host reaps.
Processes inside cannot signal init (the kernel drops what it has no handler for), but they run
under the same uid and may still write to its stream through ``/proc/1/fd``. None of this is a
security boundary: the limits are in force before the algorithm starts, and the host treats the
stream as untrusted (bounded in size, names checked, only regular files written). What the
launcher gives is an honest algorithm's *diagnosis* (which limit stopped it) and the listing.
"""

# Not `signal`, contextlib or runpy: each costs milliseconds at every start (`signal` makes enums).
import _signal  # type: ignore[import-not-found]
import errno
import os
import resource
import stat
import sys

STARTED = b"dataex-sandbox started\n"
END = b"END\n"
EXIT_MEMORY = 120
EXIT_PIDS = 121
EXIT_OUTPUT = 122
EXIT_LAUNCHER = 123
PROGRAM_EXIT_MAX = 119
PROGRAM = "/job/algorithm.py"
LIBRARIES = "/job/lib"
OUTPUT_DIR = "/data/output"
_CHUNK = 1 << 16
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def main(argv: list[str]) -> None:
    stream, cpu, memory, pids, files, fsize = (int(value) for value in argv[1:7])
    try:
        _close_inherited(keep=stream)
        os.set_inheritable(stream, False)  # a program the algorithm execs gets no stream
        _write_all(stream, STARTED)
        _signal.signal(_signal.SIGTERM, _stop)
        algorithm = os.fork()
    except Exception as error:  # noqa: BLE001 - any failure here is the platform's, not the job's
        _report(f"dataex sandbox: the launcher failed: {error!r}\n")
        os._exit(EXIT_LAUNCHER)
    if algorithm == 0:
        os.close(stream)
        _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
        try:
            _set_limits(cpu=cpu, memory=memory, pids=pids, files=files, fsize=fsize)
        except Exception as error:  # noqa: BLE001 - the platform's failure again
            _report(f"dataex sandbox: the limits could not be set: {error!r}\n")
            os._exit(EXIT_LAUNCHER)
        code = _run_algorithm()
        _flush()
        os._exit(code)  # the algorithm's forked processes end here too
    code = _reap_until(algorithm)
    _end_the_rest()
    if code < EXIT_MEMORY:
        try:
            _send_output(stream)
        except OSError as error:
            _report(f"dataex sandbox: the output could not be listed: {error!r}\n")
    os._exit(code)


def _stop(_signum: int, _frame: object) -> None:
    """SIGTERM from the host when the wall clock runs out: kill every other process of the
    namespace. The waiting loop then reaps them, so the CPU they used is counted (had the host
    killed init instead, the kernel would reap them unaccounted)."""
    try:  # noqa: SIM105 - contextlib costs milliseconds at every start
        os.kill(-1, _signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap_until(algorithm: int) -> int:
    """Reap processes until the algorithm's ends; its exit code, or 128 + n for a signal n."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return EXIT_LAUNCHER
        if pid == algorithm:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def _end_the_rest() -> None:
    """Kill and reap whatever the algorithm left running, before its output is listed."""
    try:
        os.kill(-1, _signal.SIGKILL)  # every process of the namespace but init
    except ProcessLookupError:
        return
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _close_inherited(*, keep: int) -> None:
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)


def _set_limits(*, cpu: int, memory: int, pids: int, files: int, fsize: int) -> None:
    # SIGXCPU at the soft CPU limit (Python dies of it); SIGKILL a second later if it is ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NPROC, (pids, pids))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run_algorithm() -> int:
    if os.path.isdir(LIBRARIES):  # noqa: PTH112 - pathlib is one more import at every start
        sys.path.append(LIBRARIES)
    try:
        _run_as_main(PROGRAM)
    except SystemExit as stop:
        return _program_exit_code(stop.code)
    except BaseException as error:  # noqa: BLE001 - every failure becomes an exit code
        return _failure_code(error)
    return 0


def _run_as_main(path: str) -> None:
    """Run a file as ``__main__``, as ``python path`` would (runpy costs milliseconds more)."""
    with open(path, "rb") as file:  # noqa: PTH123 - pathlib is one more import at every start
        source = file.read()
    module = type(sys)("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    sys.argv = [path]
    exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - running it is the point


def _program_exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code if 0 <= code <= PROGRAM_EXIT_MAX else 1
    _report(f"{code}\n")
    return 1


def _failure_code(error: BaseException) -> int:
    limit = _limit_reached(error)
    if limit is not None:
        code, what = limit
        _report(f"dataex sandbox: {what} ({type(error).__name__})\n")
        return code
    try:
        import traceback

        traceback.print_exception(error)
    except BaseException:  # noqa: BLE001 - a traceback that cannot print still fails the job
        _report(f"dataex sandbox: the algorithm failed ({type(error).__name__})\n")
    return 1


def _limit_reached(error: BaseException) -> tuple[int, str] | None:
    """Which limit an exception (or one it was raised from) means, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return EXIT_MEMORY, "memory limit reached"
        if isinstance(current, BlockingIOError) and current.errno == errno.EAGAIN:
            return EXIT_PIDS, "process limit reached"
        if isinstance(current, RuntimeError) and "can't start new thread" in str(current):
            return EXIT_PIDS, "process limit reached"
        if isinstance(current, OSError) and current.errno in _SPACE_ERRNOS:
            return EXIT_OUTPUT, "output space limit reached"
        current = current.__cause__ or current.__context__
    return None


def _send_output(stream: int) -> None:
    with os.scandir(OUTPUT_DIR) as entries:
        listed = sorted(entries, key=lambda entry: entry.name)
    for entry in listed:
        mode = entry.stat(follow_symlinks=False).st_mode
        kind = _kind(mode)
        if kind != "file":
            _write_all(stream, _header(entry.name, kind, 0))
            continue
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            _write_all(stream, _header(entry.name, kind, size))
            _copy(fd, stream, size)
        finally:
            os.close(fd)
    _write_all(stream, END)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "folder"
    return "other"


def _header(name: str, kind: str, size: int) -> bytes:
    return f"{kind} {size} {os.fsencode(name).hex()}\n".encode()


def _copy(source: int, stream: int, size: int) -> None:
    left = size
    while left > 0:
        chunk = os.read(source, min(_CHUNK, left))
        if not chunk:  # the file shrank under us: pad, so the stream stays well framed
            chunk = b"\0" * min(_CHUNK, left)
        _write_all(stream, chunk)
        left -= len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _report(text: str) -> None:
    try:  # noqa: SIM105 - contextlib costs milliseconds at every start
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - as above
            stream.flush()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    main(sys.argv)
