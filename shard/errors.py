"""Exceptions the servicer maps to gRPC codes (:mod:`shard.interceptor`); messages say what is wrong."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """The request is malformed or breaks a limit -> INVALID_ARGUMENT. Raised before anything is written."""


class BatchNotFound(LookupError):
    """A batch id the shard does not hold -> NOT_FOUND."""

    def __str__(self) -> str:  # NOTE: LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else "batch not found"
