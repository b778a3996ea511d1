"""Alembic migrations of the case database, shipped in the package (``dermtriage db upgrade``)."""
