"""Meridian's Python client: one object for a whole multi-region cluster."""

from .client import (Forbidden, MeridianClient, MeridianError, NotFound, PreconditionFailed, Result, Unauthenticated,
                     Unavailable)

__all__ = ["MeridianClient", "MeridianError", "NotFound", "PreconditionFailed", "Unauthenticated", "Forbidden", "Unavailable",
           "Result"]
__version__ = "0.1.0"
