"""The two exception families that decide an item's fate.

`PermanentError`: retrying cannot help (invalid message, forbidden URL, 4xx, not a media
file, clip outside the media); the item goes to the dead-letter list at once.
`TransientError`: the world may heal (network, 5xx, timeouts, Redis or S3 unavailable);
the item is retried with backoff, then dead-lettered after `retry.max_attempts`.
Messages name the field, URL or limit so that a dead letter explains itself.
"""


class ClipperError(Exception):
    kind = "permanent"


class PermanentError(ClipperError):
    kind = "permanent"


class TransientError(ClipperError):
    kind = "transient"


class OutputUnavailable(TransientError):
    """The output (S3 bucket or output directory) cannot take writes now: an outage or a
    deployment problem, not the message's fault. The item waits without using up an attempt,
    and the daemon stops claiming until the output takes writes again."""


class EmptyOutput(PermanentError):
    """ffmpeg wrote nothing (`-abort_on empty_output`): e.g. no frame at or after a seek."""


class Cancelled(ClipperError):
    """The daemon is shutting down and killed this job; its item goes back to the queue."""

    kind = "cancelled"


class SettingsError(Exception):
    """Invalid or unreadable settings; the message names the key or file."""
