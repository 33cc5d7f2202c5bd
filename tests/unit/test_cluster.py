"""A JetStream cluster as the settings name it (the cluster itself: tests/integration)."""

from __future__ import annotations

import pytest

from exchange.platform.settings import Settings, SettingsError


def test_a_cluster_is_configured_by_a_list_of_urls_and_a_replica_count():
    settings = Settings.from_env(
        {
            "DATAEX_NATS_URL": "nats://10.0.0.1:4222, nats://10.0.0.2:4222,nats://10.0.0.3:4222",
            "DATAEX_STREAM_REPLICAS": "3",
        }
    )
    assert settings.stream_replicas == 3
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings().stream_replicas is None  # unset: the stream keeps what it has
    with pytest.raises(SettingsError) as bad:
        Settings.from_env(
            {"DATAEX_NATS_URL": "nats://a:4222,http://b", "DATAEX_STREAM_REPLICAS": "7"}
        )
    assert [p.split(":")[0] for p in bad.value.problems] == [
        "DATAEX_NATS_URL",
        "DATAEX_STREAM_REPLICAS",
    ]
