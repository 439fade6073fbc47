"""The inspection cycle: sequencing, pipelining, fusion, verdict, fault handling.

- decision.py: scores normalised by their thresholds -> verdict (pure, no I/O).
- models.py: the recipe's trained detectors and calibrated thresholds (`load_detector_set`).
- recorder.py: shots, heatmaps and database rows, in crash-safe order; journal; recovery.
- faults.py: what each fault means (kind, operator message, policy).
- cycle.py: `Inspector` (live on the cell or the twin, offline on stored images).
- live_view.py: the operator's rich terminal view.
"""
