"""The one exception hierarchy of Chargewatch.

Every error the project raises on purpose derives from :class:`ChargewatchError`, and says
where it happened (file and offset, topic/partition/offset, or service) in words a user can
act on.
"""

from __future__ import annotations


class ChargewatchError(Exception):
    """Base class of every error Chargewatch raises on purpose."""


class ConfigError(ChargewatchError):
    """A configuration file or value is invalid (names the file and the key)."""


class CaptureError(ChargewatchError):
    """A capture file cannot be read at all (names the file and the byte offset)."""


class DecodeError(ChargewatchError):
    """One frame or message could not be decoded; counted, never fatal to a run."""


class ServiceError(ChargewatchError):
    """Kafka, Elasticsearch or a dev-stack service is missing or misbehaving."""


class StoreError(ChargewatchError):
    """An alert store (Elasticsearch or the embedded SQLite store) refused an operation."""


class ModelError(ChargewatchError):
    """A model version in the registry cannot be used (names the version and what is wrong)."""
