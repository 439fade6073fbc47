"""Operator review pages: queue of rejected parts, part pages, reviews, CSV export.

`station.review.app.create_app` builds the FastAPI app; `station.review.store` holds the
queries (also `reviewed_parts()` / `latest_labels()` for calibration); `station.review.security`
the session, CSRF and file-path checks; `station review` (station/cli/review.py) serves it.
"""
