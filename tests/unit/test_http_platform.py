"""The HTTP platform without a server: secrets never reach the logs."""


def test_redaction_masks_secret_keys_and_token_shaped_values():
    from exchange.platform.logging import redact_secrets

    event = redact_secrets(
        None,
        "info",
        {
            "event": "x",
            "password": "p",
            "authorization": "Bearer abc",
            "token_id": "keep-me",
            "note": "got dxt_0123abcd_SECRETsecret in a message",
        },
    )
    assert event["password"] == "[redacted]"
    assert event["authorization"] == "[redacted]"
    assert event["token_id"] == "keep-me"
    assert "SECRETsecret" not in event["note"]


def test_redaction_masks_the_passwords_of_urls():
    from exchange.platform.logging import redact_secrets

    event = redact_secrets(
        None,
        "error",
        {
            "event": "x",
            "url": "nats://dataex:s3cret-_x@127.0.0.1:4222",
            "error": "cannot reach postgresql://postgres:p%40ss@/dataex?host=/tmp/s (refused)",
            "public": "http://127.0.0.1:8000/v1",
        },
    )
    assert event["url"] == "nats://dataex:[redacted]@127.0.0.1:4222"
    assert (
        event["error"]
        == "cannot reach postgresql://postgres:[redacted]@/dataex?host=/tmp/s (refused)"
    )
    assert event["public"] == "http://127.0.0.1:8000/v1"
