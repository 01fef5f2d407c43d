"""The human-review service: the queue in SQLite or PostgreSQL (`tables`, `store`), its Label Studio export
(`label_studio`), and the web page and JSON API (`app`, with its page templates in `web/`).

Layer: beside the judges, above the base modules of `rlaif`; the pipeline enqueues into it and merges from it.
"""
