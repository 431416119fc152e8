"""The review station: people decide on what the system finds (audit suspects, low-confidence predictions, lists
an admin uploads), and their decisions flow back into the catalog's labels.

store (SQLAlchemy: users, queued items, append-only decisions, leases), queues (audit and categorize outputs ->
items), app (Flask: pages and the HTTP API), cli (`deepfusion review ...`).
"""
