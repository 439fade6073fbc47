"""A part's result going out to the line, and the sheet held when the line I/O fails.

The result goes out in two steps: publish (reject output, the sheet's number, RESULT_VALID,
each read back) and release. A failure before the publish is complete leaves the sheet held:
the part becomes a fault, and the resume rejects and releases it. A failure after it (the
release) leaves the line with the verdict it was given: the record keeps that verdict, and
the resume only releases the sheet, never publishing a second, different result.
"""

from __future__ import annotations

from dataclasses import dataclass

from station.decision import Verdict
from station.inspection.faults import Fault, classify
from station.inspection.recorder import PartRecord
from station.interfaces import LineIO


@dataclass
class HeldSheet:
    part: PartRecord
    published: bool  # the line has the part's verdict; the resume only releases the sheet


def send_result(line: LineIO, part: PartRecord) -> tuple[Fault, HeldSheet] | None:
    """Publish `part`'s verdict and release the sheet; on a line I/O failure the fault and
    the held sheet (`part`'s verdict and reason updated to say what the line was told)."""
    published = False
    try:
        line.publish_result(part.verdict is not Verdict.PASS)
        published = True
        line.release_part()
    except Exception as exc:  # noqa: BLE001 (any failure holds the sheet)
        fault = classify(exc)
        if published:
            part.reason = f"{part.reason or part.verdict.value}; published, then {fault.message}"
        else:
            maybe = " (the line may have taken it as a pass: check the sheet)" if (
                part.verdict is Verdict.PASS) else ""
            part.reason = (f"{fault.message}; before that: {part.verdict.value}, {part.reason}"
                           f"{maybe}")
            part.verdict = Verdict.FAULT
        return fault, HeldSheet(part, published)
    return None


def release_held(line: LineIO, held: HeldSheet) -> str:
    """At the resume: release the held sheet (rejecting it first unless its result went out);
    the message for the operator."""
    if held.published:
        line.release_part()
        return f"held part {held.part.sequence} released ({held.part.verdict.value}, as published)"
    line.publish_result(True)
    line.release_part()
    return f"held part {held.part.sequence} rejected and released"


def still_held(held: HeldSheet) -> str:
    """For the operator when the station stops with a sheet held."""
    if held.published:
        return (f"part {held.part.sequence} is still held on the line; the line was told "
                f"{held.part.verdict.value}: release it by hand")
    return f"part {held.part.sequence} is still held on the line (fault): divert it by hand"
