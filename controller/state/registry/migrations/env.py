"""alembic environment for the registry: runs on the connection llmops hands it."""

from __future__ import annotations

from alembic import context

from controller.state.registry.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand with sqlalchemy.url set
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
