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
