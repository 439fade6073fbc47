"""The sheet map: shot anomaly maps projected onto the sheet (mm, robot base axes) and fused.

Types shared by inspection (which builds the map), storage (which records it) and review.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SheetDefect:
    """One defect region on the sheet map."""

    centre_mm: tuple[float, float]  # robot base frame, on the table plane
    area_mm2: float
    peak: float  # the region's highest fused score, divided by the detector's threshold
    detector: str
    shots: tuple[str, ...]  # names of the poses whose shots see the region
