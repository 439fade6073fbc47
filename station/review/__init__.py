"""Operator review pages: queue of rejected parts, part pages, reviews, CSV export.

`station.review.app.create_app` builds the FastAPI app from:
- `pages`: the queue, the next part to review, part pages, images under the data root;
- `reviews`: the review POST and the CSV export;
- `login`: login and logout (when the app requires them);
- `guard`: Host check, session cookie, login/Bearer check, security headers, body limits;
- `web`: what the routes share (settings, rendering, refusals, CSRF-checked forms);
- `filters`: the queue filter carried in query strings.
`store` holds the queries;
`security` the session, CSRF and file-path checks; `station review` (station/cli/review.py)
serves it.
"""
