"""The hostile suite: real algorithms (tests/sandbox/algorithms) run in the real sandbox, and the
output checks applied to what they leave. Each expected outcome is the issue's."""

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exchange.compute import sandbox
from exchange.compute.outputs import OutputRejected, Result, check, csv_rows
from exchange.compute.sandbox import Limits, Outcome

ALGORITHMS = Path(__file__).parent / "algorithms"
IDENTIFIERS = {"customer_id", "name"}
SECRET = "s3cret-master-key-6f1d2a"
OTHER_GRANT_SECRET = "C999,王秘密,310000,2026-01,88888.00,41"
ROOT = os.geteuid() == 0


@dataclass
class Grant:
    """A grant's file as the exchange keeps it (0600 in a 0700 folder), and what is not the
    job's: another grant's file and a state folder's key, both root-only."""

    sales: Path
    other_grant: Path
    state_secret: Path


@pytest.fixture
def grant(tmp_path: Path) -> Grant:
    folder = tmp_path / "grant"
    folder.mkdir(mode=0o700)
    sales = folder / "sales.csv"
    lines = ["customer_id,name,region,month,amount,age"]
    for region in ("310000", "110000", "440300"):
        for month in range(1, 5):
            for n in range(12):
                lines.append(
                    f"C{region}{month}{n:02d},客户{n},{region},2026-0{month},{100 + n}.50,{20 + n}"
                )
    sales.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sales.chmod(0o600)
    other = tmp_path / "other-grant"
    other.mkdir(mode=0o700)
    (other / "customers.csv").write_text(OTHER_GRANT_SECRET, encoding="utf-8")
    (other / "customers.csv").chmod(0o600)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "master.key").write_text(SECRET)
    (state / "master.key").chmod(0o600)
    return Grant(
        sales=sales, other_grant=other / "customers.csv", state_secret=state / "master.key"
    )


@pytest.fixture
def run_job(tmp_path: Path, grant: Grant) -> Callable[..., tuple[Outcome, Path]]:
    jobs = iter(range(1_000))

    def run(
        algorithm: str, *, params: object = None, limits: Limits | None = None
    ) -> tuple[Outcome, Path]:
        workdir = tmp_path / f"job-{next(jobs)}-{algorithm}"
        workdir.mkdir(mode=0o700)
        outcome = sandbox.run(
            ALGORITHMS / f"{algorithm}.py",
            {"sales.csv": grant.sales},
            json.dumps(params or {}).encode(),
            limits or Limits(),
            workdir,
        )
        return outcome, workdir / "output"

    return run


def checked(output: Path, outcome: Outcome, grant: Grant) -> Result:
    return check(
        output,
        max_bytes=Limits().output_bytes,
        k=10,
        forbidden_columns=IDENTIFIERS,
        input_rows=lambda: csv_rows(grant.sales),
        refused=outcome.output_refused,
    )


def rejection(output: Path, outcome: Outcome, grant: Grant) -> OutputRejected:
    with pytest.raises(OutputRejected) as caught:
        checked(output, outcome, grant)
    return caught.value


def report(output: Path) -> dict[str, Any]:
    seen: dict[str, Any] = json.loads((output / "report.json").read_text(encoding="utf-8"))
    return seen


def assert_exited(outcome: Outcome) -> None:
    assert (outcome.status, outcome.exit_code) == ("exited", 0), outcome.stderr_tail


def sandbox_processes() -> list[int]:
    """Host processes running as uid 65534 (the sandbox's host uid when the tests run as root)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
            if uids[1] == str(sandbox.SANDBOX_UID):
                found.append(int(entry.name))
    return found


# --- a well-behaved job ----------------------------------------------------------------------


def test_a_well_behaved_aggregate_passes_every_check(run_job, grant):
    outcome, output = run_job("aggregate", params={"group_by": "region"})
    assert_exited(outcome)
    assert outcome.limit is None and outcome.signal is None
    assert 0 < outcome.cpu_seconds < outcome.wall_seconds + 1
    result = checked(output, outcome, grant)
    assert result.columns == ("region", "count", "mean_amount")
    assert [row[:2] for row in result.rows] == [("110000", 48), ("310000", 48), ("440300", 48)]


def test_the_algorithm_runs_as_uid_65534_with_nothing_of_the_hosts_environment(
    run_job, monkeypatch
):
    monkeypatch.setenv("DATAEX_SANDBOX_TEST_SECRET", SECRET)
    outcome, output = run_job("whoami")
    assert_exited(outcome)
    seen = report(output)
    assert (seen["uid"], seen["gid"]) == (65534, 65534)
    assert 0 not in seen["groups"]
    assert seen["hostname"] == "sandbox"
    assert set(seen["environ"]) <= {"LANG", "HOME", "TMPDIR", "PATH", "PWD"}  # PWD: bubblewrap


def test_as_root_the_sandbox_runs_as_nobody_on_the_host_too(run_job):
    # bubblewrap run as root would map uid 65534 inside to host root: it is started as nobody.
    if not ROOT:
        pytest.skip("needs root: otherwise the sandbox runs as the caller's uid")
    seen: list[list[str]] = []

    def watch() -> None:
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            running = sandbox_processes()
            if len(running) >= 3:  # bubblewrap, the launcher (init), the algorithm
                seen.append([Path(f"/proc/{pid}/comm").read_text().strip() for pid in running])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    outcome, _ = run_job("sleep_forever", limits=Limits(wall_seconds=2))
    watcher.join()
    assert outcome.status == "timed_out"
    assert seen, "no process of uid 65534 seen while the job ran"
    assert "bwrap" in seen[0]
    assert "python3" in seen[0] or "python3.11" in seen[0]
    assert sandbox_processes() == []


# --- no network -------------------------------------------------------------------------------


def test_no_connection_leaves_the_sandbox(run_job):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        outcome, output = run_job("network", params={"port": listener.getsockname()[1]})
        assert_exited(outcome)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
    attempts = report(output)
    # socket(2) itself is refused by the seccomp filter: EPERM, for every family.
    names = ("postgres", "listener", "public", "udp", "ipv6", "unix", "socketpair")
    assert attempts == dict.fromkeys(names, "errno 1")


# --- nothing that is not the job's can be read, and nothing written outside its output ---------


def test_secrets_other_grants_and_the_state_folder_are_absent(run_job, grant, monkeypatch):
    monkeypatch.setenv("DATAEX_SANDBOX_TEST_SECRET", SECRET)
    host_paths = [
        str(grant.other_grant),
        str(grant.other_grant.parent),
        str(grant.state_secret),
        str(grant.sales),  # its own input, by the host's path: not there either
        str(Path.cwd() / "pyproject.toml"),
        str(Path.cwd() / ".venv" / "pyvenv.cfg"),
        "/root/.bash_history",
        "/work",
    ]
    outcome, output = run_job("read_secrets", params={"paths": host_paths})
    assert_exited(outcome)
    seen = report(output)
    for path in ["/etc/shadow", "/etc/passwd", "/root/.bashrc", "/sys/kernel/notes", *host_paths]:
        assert seen[path] in {"errno 2", "errno 13"}, (path, seen[path])  # absent or refused
    # /proc/1 is the sandbox's own init: its environment is the sandbox's, not the host's.
    assert "DATAEX" not in seen["/proc/1/environ"]
    assert seen["ls /"] == "bin data dev job lib lib64 proc tmp usr"
    assert seen["ls /data/inputs"] == "params.json sales.csv"
    everything = (output / "report.json").read_text(encoding="utf-8") + outcome.stderr_tail
    assert SECRET not in everything
    assert "王秘密" not in everything
    try:
        host_init = Path("/proc/1/environ").read_bytes()
    except OSError:  # a container may hide it even from root
        host_init = b""
    for variable in host_init.split(b"\0"):
        value = variable.partition(b"=")[2].decode(errors="replace")
        assert len(value) < 12 or value not in everything


def test_a_root_only_file_is_unreadable_even_when_bound(tmp_path):
    # Bound into the sandbox on purpose (as a library folder): as uid 65534 on the host the job
    # still cannot read a 0600 file of root's. Its inputs are readable because they are staged
    # for it, not because it could read root's files.
    if not ROOT:
        pytest.skip("needs root: the host uid is dropped only when running as root")
    folder = Path(tempfile.mkdtemp(prefix="dataex-test-lib-"))
    try:
        folder.chmod(0o755)
        (folder / "secret.txt").write_text(SECRET)
        (folder / "secret.txt").chmod(0o600)
        program = tmp_path / "read.py"
        program.write_text(
            "import json, os\n"
            "try:\n    seen = open('/job/lib/secret.txt').read()\n"
            "except OSError as error:\n    seen = f'errno {error.errno}'\n"
            "json.dump({'seen': seen, 'listed': os.listdir('/job/lib')},"
            " open('/data/output/report.json', 'w'))\n"
        )
        workdir = tmp_path / "job"
        workdir.mkdir()
        outcome = sandbox.run(program, {}, b"{}", Limits(), workdir, libraries=folder)
    finally:
        shutil.rmtree(folder)
    assert_exited(outcome)
    assert report(workdir / "output") == {"seen": "errno 13", "listed": ["secret.txt"]}


def test_a_folder_of_allowed_libraries_is_importable(tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="dataex-test-lib-"))
    try:
        folder.chmod(0o755)
        (folder / "tally.py").write_text("def total(values):\n    return sum(values)\n")
        (folder / "tally.py").chmod(0o644)
        program = tmp_path / "use.py"
        program.write_text(
            "import json, tally\n"
            "json.dump({'total': tally.total([1, 2, 3])}, open('/data/output/report.json', 'w'))\n"
        )
        workdir = tmp_path / "job"
        workdir.mkdir()
        outcome = sandbox.run(program, {}, b"{}", Limits(), workdir, libraries=folder)
    finally:
        shutil.rmtree(folder)
    assert_exited(outcome)
    assert report(workdir / "output") == {"total": 6}


def test_seccomp_and_read_only_mounts_refuse_escapes(run_job):
    outcome, output = run_job("escape")
    assert_exited(outcome)
    seen = report(output)
    for call in ("unshare user", "unshare net", "clone newns", "mount", "ptrace traceme",
                 "io_uring_setup", "keyctl", "bpf"):  # fmt: skip
        assert seen[call] == 1, (call, seen[call])  # EPERM
    assert seen["setuid 0"] == 22  # EINVAL: uid 0 does not exist in the sandbox
    for path in ("/data/inputs/sales.csv", "/usr/bin/python3", "/escape", "/dev/shm/x", "/data/x"):
        assert seen[f"write {path}"] in {13, 30}, (path, seen)  # EACCES, EROFS
    assert seen["fork"] == 0


# --- only aggregates leave --------------------------------------------------------------------


def test_copying_the_input_rows_out_is_row_level(run_job, grant):
    outcome, output = run_job("copy_inputs")
    assert_exited(outcome)
    assert rejection(output, outcome, grant).reason == "row_level"


def test_copying_the_input_file_into_the_output_is_refused(run_job, grant):
    outcome, output = run_job("copy_file")
    assert_exited(outcome)
    problem = rejection(output, outcome, grant)
    assert problem.reason == "schema"
    assert "sales.csv" not in problem.detail  # a name the algorithm chose is not repeated


def test_grouping_by_an_identifier_is_refused(run_job, grant):
    outcome, output = run_job("group_by_identifier")
    assert_exited(outcome)
    assert rejection(output, outcome, grant).reason == "identifier"


def test_a_group_smaller_than_k_is_refused(run_job, grant):
    outcome, output = run_job("small_group")
    assert_exited(outcome)
    assert rejection(output, outcome, grant).reason == "k"


def test_a_link_from_the_output_to_an_input_is_refused(run_job, grant):
    outcome, output = run_job("symlink_output")
    assert_exited(outcome)
    assert f"hard link refused: errno {18}" in outcome.stderr_tail  # EXDEV: another mount
    assert outcome.output_refused == ("result.json (link)",)
    assert list(output.iterdir()) == []  # nothing was copied, let alone followed
    assert rejection(output, outcome, grant).reason == "not_regular_file"


# --- time -------------------------------------------------------------------------------------


def test_an_endless_loop_stops_at_its_cpu_limit(run_job):
    limits = Limits(cpu_seconds=1, wall_seconds=10)
    outcome, _ = run_job("infinite_loop", limits=limits)
    assert (outcome.status, outcome.limit) == ("timed_out", "cpu"), outcome
    assert outcome.signal == signal.SIGXCPU
    assert outcome.cpu_seconds <= limits.cpu_seconds + 0.3
    assert outcome.wall_seconds <= limits.wall_seconds + 1


def test_an_endless_loop_stops_at_the_wall_clock_and_is_charged_its_cpu_only(run_job):
    limits = Limits(cpu_seconds=10, wall_seconds=1)
    outcome, _ = run_job("infinite_loop", limits=limits)
    assert (outcome.status, outcome.limit) == ("timed_out", None), outcome
    assert outcome.wall_seconds <= limits.wall_seconds + 1
    # One core for at most the wall limit: the CPU the loop used, counted even though killed.
    assert 0.1 < outcome.cpu_seconds <= limits.wall_seconds + 0.2


def test_a_job_that_sleeps_forever_stops_at_the_wall_clock(run_job):
    limits = Limits(wall_seconds=1)
    outcome, _ = run_job("sleep_forever", limits=limits)
    assert (outcome.status, outcome.limit, outcome.signal) == ("timed_out", None, signal.SIGKILL)
    assert outcome.wall_seconds <= limits.wall_seconds + 1
    assert outcome.cpu_seconds < 0.5


# --- memory, processes, output: each limit, and the next job runs normally ---------------------


@pytest.mark.parametrize(
    ("algorithm", "limits", "limit"),
    [
        ("allocate", Limits(memory_bytes=256 * 2**20), "memory"),
        ("fork_bomb", Limits(pids=16), "pids"),
        ("big_write", Limits(), "output"),
    ],
)
def test_a_limit_stops_the_job_and_the_next_job_runs_normally(
    run_job, grant, algorithm, limits, limit
):
    outcome, output = run_job(algorithm, limits=limits)
    assert (outcome.status, outcome.limit) == ("limit_exceeded", limit), outcome
    assert f"{'process' if limit == 'pids' else limit}" in outcome.stderr_tail
    if ROOT:
        assert sandbox_processes() == []  # nothing of the job is left running
    outcome, output = run_job("aggregate", params={"group_by": "month"})
    assert_exited(outcome)
    assert len(checked(output, outcome, grant).rows) == 4


def test_a_fork_bomb_does_not_starve_a_job_running_beside_it(run_job, grant):
    # RLIMIT_NPROC counts per user namespace: each job has its own count under the same uid.
    results: dict[str, Outcome] = {}

    def bomb() -> None:
        results["bomb"] = run_job("fork_bomb", limits=Limits(pids=16, wall_seconds=5))[0]

    thread = threading.Thread(target=bomb)
    thread.start()
    outcome, _ = run_job("aggregate", params={"group_by": "region"})
    thread.join()
    assert_exited(outcome)
    assert results["bomb"].limit == "pids"


# --- the platform -----------------------------------------------------------------------------


def test_a_sandbox_that_cannot_start_is_a_platform_failure(run_job, monkeypatch):
    runtime = sandbox.system_runtime()
    broken = sandbox.Runtime(
        python=Path("/nonexistent/python3"), stdlib=runtime.stdlib, shared_libraries=()
    )
    monkeypatch.setattr(sandbox, "system_runtime", lambda: broken)
    outcome, output = run_job("aggregate")
    assert outcome.status == "failed_platform"
    assert "/nonexistent/python3" in outcome.stderr_tail
    assert list(output.iterdir()) == []


def test_inputs_are_staged_for_the_run_and_the_staging_goes(run_job, grant):
    before = set(Path("/tmp").glob("dataex-sandbox-*"))
    outcome, _ = run_job("aggregate", params={"group_by": "region"})
    assert_exited(outcome)
    assert set(Path("/tmp").glob("dataex-sandbox-*")) <= before
    assert grant.sales.stat().st_mode & 0o777 == 0o600  # the input itself is untouched


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "params.json", "x\0y"])
def test_an_input_name_must_be_a_plain_file_name(tmp_path, grant, name):
    with pytest.raises(ValueError, match="cannot name an input"):
        sandbox.run(ALGORITHMS / "aggregate.py", {name: grant.sales}, b"{}", Limits(), tmp_path)
