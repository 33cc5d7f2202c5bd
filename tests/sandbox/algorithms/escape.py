"""Hostile: tries the calls the seccomp filter denies and writes where it may not; reports the
errno of each attempt (0: it worked) as JSON in its output (report.json)."""

import ctypes
import json
import os

libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS = 0x10000000, 0x40000000, 0x00020000
SYS_IO_URING_SETUP, SYS_KEYCTL, SYS_BPF, SYS_CLONE = 425, 250, 321, 56
report: dict[str, int] = {}


def attempt(name: str, result: int) -> None:
    report[name] = ctypes.get_errno() if result == -1 else 0


attempt("unshare user", libc.unshare(CLONE_NEWUSER))
attempt("unshare net", libc.unshare(CLONE_NEWNET))
attempt("clone newns", libc.syscall(SYS_CLONE, CLONE_NEWNS | 17, 0, 0, 0, 0))
attempt("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
attempt("ptrace traceme", libc.ptrace(0, 0, None, None))
attempt("io_uring_setup", libc.syscall(SYS_IO_URING_SETUP, 8, ctypes.create_string_buffer(120)))
attempt("keyctl", libc.syscall(SYS_KEYCTL, 0, 0, 0, 0, 0))
attempt("bpf", libc.syscall(SYS_BPF, 0, 0, 0))
attempt("setuid 0", libc.setuid(0))
for path in ["/data/inputs/sales.csv", "/usr/bin/python3", "/escape", "/dev/shm/x", "/data/x"]:
    try:
        with open(path, "ab") as file:
            file.write(b"x")
        report[f"write {path}"] = 0
    except OSError as error:
        report[f"write {path}"] = error.errno or -1
pid = os.fork()  # an ordinary fork still works
if pid == 0:
    os._exit(0)
report["fork"] = os.waitpid(pid, 0)[1]
with open("/data/output/report.json", "w", encoding="utf-8") as report_file:
    json.dump(report, report_file)
