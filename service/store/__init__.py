"""Cases, reviews, outcomes, annotations, CDS Hooks feedback and the audit trail in a database (issue 18).

SQLAlchemy 2 through advanced-alchemy (its Litestar plugin, config and repositories) with Alembic
migrations shipped in ``migrations/``. The embedded default is a SQLite file; PostgreSQL at scale.
Part of ``service``: ``models/`` and ``explain/`` never import it.
"""
