"""The inspection cycle: sequencing, pipelining, fusion, verdict, fault handling.

- capture.py: `run_capture` (station capture): shots in MVTec-AD layout, Part and Shot rows.
- models.py: the recipe's trained detectors and calibrated thresholds (`load_detector_set`).
- recorder.py: shots, heatmaps and database rows, in crash-safe order; journal; recovery.
- faults.py: what each fault means (kind, operator message, policy).
- cycle.py: `Inspector` (live on the cell or the twin, offline on stored images).
- results.py: what the cycle reports (timings, acquired shots, part results, events, run summary).
- offline.py: stored image files grouped into parts (`group_offline`) and read as shots.
- live_view.py: the operator's rich terminal view.
"""
