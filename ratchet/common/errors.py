"""The project's exception tree.

User errors (bad input, bad flags, bad files) are ``UserError``: the CLI prints their message
as one line and exits non-zero without a traceback. Broker failures are split by what the
caller may do next: retry, give up, or look the order up (never resend it).
"""

from __future__ import annotations


class RatchetError(Exception):
    """Base class of every error the project raises on purpose."""


class UserError(RatchetError):
    """Bad input from the user: the message names the thing and the fix."""

    exit_code: int = 2


class ConfigError(UserError):
    """An invalid setting (config file, environment variable or CLI flag)."""


class DataError(UserError):
    """A bar file that is missing, unreadable or fails validation."""

    exit_code = 3


class BrokerError(RatchetError):
    """A failure talking to the broker."""

    exit_code: int = 4


class RetryableError(BrokerError):
    """Transient: the request certainly had no effect (or is idempotent) and may be retried."""


class RejectedError(BrokerError):
    """The venue definitely refused the request; nothing was created."""


class AmbiguousOrderError(BrokerError):
    """The order may or may not exist at the venue (timeout, 5xx, lost response).

    Resolve it by looking the order up by its client order id. Never send it again.
    """

    def __init__(self, message: str, client_order_id: str) -> None:
        super().__init__(message)
        self.client_order_id = client_order_id


class UnknownStateError(BrokerError):
    """A read of broker state (positions, orders) failed: the state is unknown, never 'flat'."""
