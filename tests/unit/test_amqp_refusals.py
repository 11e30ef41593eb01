"""Which failed AMQP connection attempts are configuration errors, for each
way aiormq reports them."""

from __future__ import annotations

import aiormq
import pytest

from jobtrack.broker.rabbitmq import _login_refused

URL = "amqp://app:s3cret@mq.example:5672/jobs%2Fprod"
errors = aiormq.exceptions


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (errors.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"), "login"),
        (errors.AuthenticationError(["AMQPLAIN"], ["PLAIN"]), "login"),
        (errors.ConnectionNotAllowed("NOT_ALLOWED - vhost jobs/prod not found"), "vhost"),
        (errors.ConnectionClosed(530, "NOT_ALLOWED - access to vhost refused"), "vhost"),
        (errors.ConnectionClosed(403, "ACCESS_REFUSED - access to vhost refused"), "vhost"),
        (
            errors.InvalidFrameError(
                "Expected one of ['Connection.OpenOk'], got <Connection.Close object at 0x1>"
            ),
            "vhost",
        ),
        (errors.AMQPConnectionError(111, "Connect call failed"), None),
        (errors.ConnectionClosed(320, "CONNECTION_FORCED - broker shutting down"), None),
        (errors.IncompatibleProtocolError("EOF"), None),
        (ConnectionResetError(104, "reset"), None),
        (TimeoutError(), None),
    ],
)
def test_refused_logins_and_virtual_hosts_are_told_from_outages(
    exc: BaseException, says: str | None
) -> None:
    refused = _login_refused(exc, URL)
    if says is None:
        assert refused is None
        return
    assert refused is not None
    text = str(refused)
    assert "s3cret" not in text
    assert "app:***@mq.example" in text
    assert text.endswith("(check JOBTRACK_BROKER_URL / --broker)")
    if says == "login":
        assert text.startswith("RabbitMQ refused the login of user 'app'")
    else:
        assert text.startswith("RabbitMQ refused virtual host 'jobs/prod' to user 'app'")
