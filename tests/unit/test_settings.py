"""Settings: every DATAEX_* variable validated, each bad one named with what it must be."""

from pathlib import Path

import pytest

from exchange.platform.bus import split_credentials
from exchange.platform.settings import Settings, SettingsError, redact_url


def test_defaults_run_embedded_on_localhost():
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.nats_url is None
    assert settings.state_dir == Path(".dataex")
    assert settings.public_url == "http://127.0.0.1:8000"


def test_values_are_read():
    settings = Settings.from_env(
        {
            "DATAEX_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
            "DATAEX_NATS_URL": "nats://127.0.0.1:4222",
            "DATAEX_HTTP_PORT": "9001",
            "DATAEX_LOG_FORMAT": "JSON",
            "DATAEX_EXCHANGE_CODE": "SZDX",
            "DATAEX_STATE_DIR": "/tmp/x",
        }
    )
    assert settings.http_port == 9001
    assert settings.log_format == "json"
    assert settings.exchange_code == "SZDX"
    assert settings.state_dir == Path("/tmp/x")
    assert settings.subject("listing", "published") == "dx.listing.published"


def test_the_metrics_folder_is_prometheus_clients_own_variable_and_reaches_the_parts():
    assert Settings.from_env({}).metrics_dir is None
    assert "PROMETHEUS_MULTIPROC_DIR" not in Settings.from_env({}).to_env()
    settings = Settings.from_env({"PROMETHEUS_MULTIPROC_DIR": "/tmp/state/metrics"})
    assert settings.metrics_dir == Path("/tmp/state/metrics")
    assert settings.to_env()["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/state/metrics"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("DATAEX_DATABASE_URL", "mysql://x/y", "scheme must be one of postgresql, postgres"),
        ("DATAEX_NATS_URL", "http://127.0.0.1:4222", "scheme must be one of nats, tls"),
        ("DATAEX_HTTP_PORT", "eighty", "must be an integer"),
        ("DATAEX_HTTP_PORT", "70000", "between 1 and 65535"),
        ("DATAEX_API_WORKERS", "0", "between 1 and 64"),
        ("DATAEX_LOG_FORMAT", "xml", "one of auto, console, json"),
        ("DATAEX_LOG_LEVEL", "loud", "one of debug, info, warning, error"),
        ("DATAEX_EXCHANGE_CODE", "sz", "2-8 upper-case letters"),
        ("DATAEX_SUBJECT_PREFIX", "DX.>", "lower-case NATS subject token"),
        ("DATAEX_RECONCILE_AFTER_SECONDS", "0", "between 1 and 86400"),
        ("DATAEX_DISPUTE_RESPONSE_DAYS", "0", "between 1 and 365"),
        ("DATAEX_DISPUTE_EVIDENCE_MAX_BYTES", "100", "between 1024 and 67108864"),
    ],
)
def test_each_bad_value_is_named(name, value, says):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{name}: ")
    assert says in caught.value.problems[0]


def test_all_bad_values_are_reported_together():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"DATAEX_HTTP_PORT": "x", "DATAEX_LOG_LEVEL": "y"})
    assert len(caught.value.problems) == 2


def test_cli_exits_2_with_the_message(monkeypatch, capsys):
    from exchange.cli import main

    monkeypatch.setenv("DATAEX_HTTP_PORT", "nope")
    assert main(["migrate"]) == 2
    assert "DATAEX_HTTP_PORT: must be an integer" in capsys.readouterr().err


def test_embedded_postgresql_gets_a_quarter_of_memory_for_buffers_within_bounds():
    from exchange.platform.embedded import server_settings

    gib = 1 << 30
    assert server_settings(24 * gib)["shared_buffers"] == "1024MB"  # capped
    assert server_settings(2 * gib)["shared_buffers"] == "512MB"
    assert server_settings(gib // 4)["shared_buffers"] == "128MB"  # floor
    assert server_settings(2 * gib)["max_wal_size"] == "4GB"
    assert server_settings()["shared_buffers"].endswith("MB")  # this machine's, read


def test_urls_with_credentials_are_read_whole_and_never_shown():
    env = {
        "DATAEX_DATABASE_URL": "postgresql://dataex:s%40cret@db.example:5432/dataex",
        "DATAEX_NATS_URL": "nats://dx:p%2Cw@n1:4222,nats://dx:p%2Cw@n2:4222",
    }
    settings = Settings.from_env(env)
    assert (settings.database_url, settings.nats_url) == (
        env["DATAEX_DATABASE_URL"],
        env["DATAEX_NATS_URL"],
    )
    assert settings.to_env()["DATAEX_NATS_URL"] == env["DATAEX_NATS_URL"]  # to the parts
    assert "cret" not in repr(settings) and "p%2Cw" not in repr(settings)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"DATAEX_NATS_URL": "nats://dx:hunter2@n1:4222,natz://dx:hunter2@n2"})
    assert "hunter2" not in str(caught.value)
    assert "natz://dx:***@n2" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://postgres:pw@/dataex?host=/tmp/s",
            "postgresql://postgres:***@/dataex?host=/tmp/s",
        ),
        ("postgresql://postgres@127.0.0.1/dataex", "postgresql://postgres@127.0.0.1/dataex"),
        ("nats://dataex:pw@127.0.0.1:4222", "nats://dataex:***@127.0.0.1:4222"),
        ("nats://s3cr3t-token@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://a:x@n1:1,nats://n2:2", "nats://a:***@n1:1,nats://n2:2"),
        ("", ""),
    ],
)
def test_redact_url_hides_passwords_and_nats_tokens(url, shown):
    assert redact_url(url) == shown


def test_nats_credentials_are_split_off_and_decoded_for_every_server():
    servers, options = split_credentials(
        "nats://dx:p%40ss%2C1@n1:4222, nats://dx:p%40ss%2C1@n2:4222"
    )
    assert servers == ["nats://n1:4222", "nats://n2:4222"]
    assert options == {"user": "dx", "password": "p@ss,1"}
    assert split_credentials("nats://tok%21en@n1:4222") == (["nats://n1:4222"], {"token": "tok!en"})
    assert split_credentials("nats://n1:4222") == (["nats://n1:4222"], {})
