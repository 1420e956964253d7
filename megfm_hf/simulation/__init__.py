"""Simulated multi-state MEG cohort: the package's default data and test oracle.

A physically modelled patient/control cohort (resting state, auditory and somatosensory runs)
written as a BIDS dataset of FIF recordings, with a planted, documented group effect and its
ground truth. Start with :func:`simulate_cohort` or ``megfm simulate --output DIR``.
"""

from .cohort import (
    EVENT_ID,
    GROUND_TRUTH_RELPATH,
    GROUP_EFFECT,
    GROUPS,
    STIM_CHANNEL,
    TASKS,
    CohortConfig,
    CohortResult,
    SubjectParameters,
    simulate_cohort,
    simulate_run,
)
from .geometry import (
    SensorGeometry,
    load_geometry,
    make_builtin_helmet,
    read_sensor_info,
    write_builtin_helmet,
)
from .sources import CANONICAL_DIPOLES, DipoleSpec, PlacedSources, place_sources

__all__ = [
    "CANONICAL_DIPOLES",
    "EVENT_ID",
    "GROUND_TRUTH_RELPATH",
    "GROUPS",
    "GROUP_EFFECT",
    "STIM_CHANNEL",
    "TASKS",
    "CohortConfig",
    "CohortResult",
    "DipoleSpec",
    "PlacedSources",
    "SensorGeometry",
    "SubjectParameters",
    "load_geometry",
    "write_builtin_helmet",
    "make_builtin_helmet",
    "place_sources",
    "read_sensor_info",
    "simulate_cohort",
    "simulate_run",
]
