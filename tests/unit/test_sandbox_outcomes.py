"""The sandbox's pure parts, without bubblewrap: how an ending is classified, how the output
listing the launcher sends is read, which limits are accepted."""

import signal

import pytest

from exchange.compute import launcher
from exchange.compute.sandbox import Limits, _copy_output, classify

LIMITS = Limits(cpu_seconds=2)


@pytest.mark.parametrize(
    ("exit_code", "started", "timed_out", "overflow", "cpu", "expected"),
    [
        (0, True, False, False, 0.1, ("exited", None, 0, None)),
        (3, True, False, False, 0.1, ("exited", None, 3, None)),
        (128 + signal.SIGSEGV, True, False, False, 0.1, ("exited", None, None, signal.SIGSEGV)),
        (128 + signal.SIGKILL, True, True, False, 0.1, ("timed_out", None, None, signal.SIGKILL)),
        (0, True, True, False, 0.1, ("timed_out", None, None, signal.SIGKILL)),
        (128 + signal.SIGXCPU, True, False, False, 2.0, ("timed_out", "cpu", None, signal.SIGXCPU)),
        # SIGKILL at the hard CPU limit (SIGXCPU ignored): CPU; without the CPU spent, a signal.
        (128 + signal.SIGKILL, True, False, False, 3.0, ("timed_out", "cpu", None, signal.SIGKILL)),
        (128 + signal.SIGKILL, True, False, False, 0.5, ("exited", None, None, signal.SIGKILL)),
        (launcher.EXIT_MEMORY, True, False, False, 0.1, ("limit_exceeded", "memory", 120, None)),
        (launcher.EXIT_PIDS, True, False, False, 0.1, ("limit_exceeded", "pids", 121, None)),
        (launcher.EXIT_OUTPUT, True, False, False, 0.1, ("limit_exceeded", "output", 122, None)),
        (0, True, False, True, 0.1, ("limit_exceeded", "output", 0, None)),
        (128 + signal.SIGXFSZ, True, False, False, 0.1, ("limit_exceeded", "output", None, 25)),
        (launcher.EXIT_LAUNCHER, True, False, False, 0.1, ("failed_platform", None, 123, None)),
        (1, False, False, False, 0.0, ("failed_platform", None, 1, None)),
    ],
)
def test_how_a_job_ended_is_classified(exit_code, started, timed_out, overflow, cpu, expected):
    assert (
        classify(
            exit_code=exit_code,
            started=started,
            timed_out=timed_out,
            output_overflow=overflow,
            cpu_seconds=cpu,
            limits=LIMITS,
        )
        == expected
    )


def entry(kind: str, name: bytes, content: bytes = b"") -> bytes:
    return f"{kind} {len(content)} {name.hex()}\n".encode() + content


def test_regular_files_are_written_and_the_rest_named(tmp_path):
    listing = (
        entry("file", b"result.json", b'{"a": 1}')
        + entry("link", b"evil")
        + entry("folder", b"sub")
        + entry("other", b"fifo")
        + launcher.END
    )
    refused = _copy_output(listing, tmp_path, 1 << 20)
    assert refused == ("evil (link)", "sub (folder)", "fifo (other)")
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert (tmp_path / "result.json").read_bytes() == b'{"a": 1}'


@pytest.mark.parametrize("name", [b"../escape", b"a/b", b"..", b".", b"", b"x\0y"])
def test_a_name_that_is_not_a_plain_file_name_is_not_written(tmp_path, name):
    listing = entry("file", name, b"x") + launcher.END
    assert len(_copy_output(listing, tmp_path / "out", 1 << 20) or ()) == 1
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "out").exists()  # nothing was written anywhere


@pytest.mark.parametrize(
    "listing",
    [
        entry("file", b"result.json", b"abc"),  # no END
        entry("file", b"result.json", b"abc")[:-1] + launcher.END,  # shorter than announced
        b"file ten 726573756c74\n" + launcher.END,
        b"socket 0 61\n" + launcher.END,
        b"garbage\n",
    ],
)
def test_an_incomplete_or_garbled_listing_copies_nothing(tmp_path, listing):
    assert _copy_output(listing, tmp_path, 1 << 20) == ("(the output listing is incomplete)",)
    assert list(tmp_path.iterdir()) == []


def test_no_listing_at_all_is_no_output(tmp_path):
    assert _copy_output(b"", tmp_path, 1 << 20) == ()


def test_files_adding_up_to_more_than_the_limit_are_an_overflow(tmp_path):
    listing = entry("file", b"a", b"x" * 600) + entry("file", b"b", b"x" * 600) + launcher.END
    assert _copy_output(listing, tmp_path, 1000) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "limits",
    [
        {"cpu_seconds": 0},
        {"wall_seconds": 0},
        {"memory_bytes": 2**20},
        {"pids": 2},
        {"output_bytes": 0},
        {"open_files": 3},
    ],
)
def test_limits_that_could_not_run_anything_are_refused(limits):
    with pytest.raises(ValueError, match="must be"):
        Limits(**limits)
