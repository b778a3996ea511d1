"""dermtriage service: the HTTP face (Litestar app, routes), intake, stores, the triage engine and the CLI.

May import `explain` and `models`; neither imports it. Only `service.cli` may reach the offline rooms
(`models.fitting`, `explain.faithfulness`, `benchmarks`), and only when a command runs.
"""
