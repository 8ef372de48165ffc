"""Errors of the drills: a scenario that cannot run is refused before anything starts."""

from __future__ import annotations


class DrillError(Exception):
    """Root of the drills' errors; `str()` is one line naming the file and field."""


class ScenarioInvalid(DrillError):
    """A scenario file that does not validate."""


class SloMissed(DrillError):
    """One or more SLOs did not hold (the drill's exit status is non-zero)."""
