"""dermtriage service: the HTTP face (Litestar app, routes), image intake, the triage engine and the CLI."""
