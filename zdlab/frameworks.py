"""The course's safe recipes as written in Ecto, Rails (Active Record + strong_migrations), Django
and Alembic, each line with the page it was checked against. Notebook 06 shows the table and
``docs/frameworks.md`` is written from it (``python -m zdlab.frameworks > docs/frameworks.md``).

The kit runs none of these tools: it runs the SQL in the second column, under traffic. A line
marked "(not documented: ...)" is the kit's own suggestion where the tool has no such feature.
"""

from __future__ import annotations

from dataclasses import dataclass

ECTO_MIG = "https://hexdocs.pm/ecto_sql/Ecto.Migration.html"
ECTO_EXEC = "https://hexdocs.pm/ecto_sql/Ecto.Migration-function-execute.html"
ECTO_INDEX = "https://hexdocs.pm/ecto_sql/Ecto.Migration-function-index.html"
ECTO_ADD = "https://hexdocs.pm/ecto_sql/Ecto.Migration-function-add.html"
ECTO_PG = "https://hexdocs.pm/ecto_sql/Ecto.Adapters.Postgres.html"
ECTO_BEGIN = "https://hexdocs.pm/ecto_sql/Ecto.Migration-callback-after_begin.html"
SAFE_ECTO = "https://github.com/fly-apps/safe-ecto-migrations/blob/main/README.md"
ECTO_BACKFILL = "https://fly.io/phoenix-files/backfilling-data/"
RAILS_GUIDE = "https://guides.rubyonrails.org/active_record_migrations.html"
STRONG = "https://github.com/ankane/strong_migrations/blob/master/README.md"
RAILS_LOCK = "https://apidock.com/rails/ActiveRecord/Migrator/with_advisory_lock"
RAILS_LOCK_OFF = "https://github.com/rails/rails/issues/31190"
DJ_OPS = "https://docs.djangoproject.com/en/5.0/_modules/django/db/migrations/operations/special"
DJ_PG_OPS = "https://docs.djangoproject.com/en/5.0/ref/contrib/postgres/operations/"
DJ_NOT_VALID = "https://code.djangoproject.com/ticket/31653"
DJ_ATOMIC = "https://docs.djangoproject.com/en/5.0/howto/writing-migrations/#non-atomic-migrations"
DJ_DB_DEFAULT = "https://docs.djangoproject.com/en/5.0/releases/5.0/#database-computed-default-values"
AL_TUTORIAL = "https://alembic.sqlalchemy.org/en/latest/tutorial.html"
AL_OPS = "https://alembic.sqlalchemy.org/en/latest/ops.html"
AL_AUTOCOMMIT = ("https://alembic.sqlalchemy.org/en/latest/api/runtime.html"
                 "#alembic.runtime.migration.MigrationContext.autocommit_block")
AL_CONCURRENT = "https://squawkhq.com/docs/require-concurrent-index-creation"


@dataclass(frozen=True)
class Line:
    recipe: str
    sql: str  # what the kit runs (and measures)
    tool: str
    written: str
    source: str


def _lines() -> list[Line]:
    r = []

    def add(recipe: str, sql: str, *tools: tuple[str, str, str]) -> None:
        r.extend(Line(recipe, sql, tool, written, source) for tool, written, source in tools)

    add("up/down instead of change", "a pair per migration: up SQL, down SQL (`zdlab.Migration(up=, down=)`)",
        ("Ecto", "`def up do ... end` and `def down do ... end` instead of `def change`", ECTO_MIG),
        ("Rails", "`def up ... end` and `def down ... end` instead of `def change`", RAILS_GUIDE),
        ("Django", "`migrations.RunSQL(sql, reverse_sql=...)`, `migrations.RunPython(code, reverse_code=...)`",
         DJ_OPS),
        ("Alembic", "`def upgrade():` and `def downgrade():` (both in every revision file)", AL_TUTORIAL))
    add("raw SQL", "the statement itself",
        ("Ecto", "`execute \"SQL\"`, or `execute(up_sql, down_sql)` (reversible in `change`)", ECTO_EXEC),
        ("Rails", "`execute \"SQL\"` (strong_migrations: `safety_assured { execute \"...\" }`)", STRONG),
        ("Django", "`migrations.RunSQL(...)`; with `SeparateDatabaseAndState(database_operations=[RunSQL(...)], "
                   "state_operations=[...])` Django's model state follows SQL it did not write", DJ_OPS),
        ("Alembic", "`op.execute(\"SQL\")`", AL_OPS))
    add("concurrent index, outside a transaction", "`CREATE INDEX CONCURRENTLY ...` in autocommit, no lock_timeout",
        ("Ecto", "`@disable_ddl_transaction true`, `@disable_migration_lock true`, "
                 "`create index(\"users\", [:email], concurrently: true)`", ECTO_INDEX),
        ("Rails", "`disable_ddl_transaction!` and `add_index :users, :email, algorithm: :concurrently`", STRONG),
        ("Django", "`atomic = False` on the Migration and `AddIndexConcurrently(model_name, index)` from "
                   "`django.contrib.postgres.operations`", DJ_PG_OPS),
        ("Alembic", "`with op.get_context().autocommit_block(): op.create_index(..., postgresql_concurrently=True)`",
         AL_AUTOCOMMIT + " ; " + AL_CONCURRENT))
    add("NOT VALID, then VALIDATE", "`ADD CONSTRAINT ... NOT VALID`; later, in its own transaction, "
        "`VALIDATE CONSTRAINT`",
        ("Ecto", "`create constraint(\"users\", :plan_check, check: \"...\", validate: false)`; next migration: "
                 "`execute \"ALTER TABLE users VALIDATE CONSTRAINT plan_check\", \"\"`", SAFE_ECTO),
        ("Rails", "`add_check_constraint :users, \"...\", name: \"plan_check\", validate: false`; next migration: "
                  "`validate_check_constraint :users, name: \"plan_check\"`", STRONG),
        ("Django", "`AddConstraintNotValid(model_name, constraint)`, then `ValidateConstraint(model_name, name)` "
                   "(`django.contrib.postgres.operations`, Django 4.0+), in a non-atomic migration",
         DJ_NOT_VALID + " ; " + DJ_PG_OPS),
        ("Alembic", "`op.execute(\"ALTER TABLE ... ADD CONSTRAINT ... NOT VALID\")`; next revision: "
                    "`op.execute(\"ALTER TABLE ... VALIDATE CONSTRAINT ...\")` (raw SQL: no NOT VALID option "
                    "was found in Alembic's own operations)", AL_OPS))
    add("constant default (PostgreSQL 11+: no rewrite)", "`ADD COLUMN plan text NOT NULL DEFAULT 'free'`",
        ("Ecto", "`alter table(\"users\") do add :plan, :text, default: \"free\", null: false end`",
         ECTO_ADD + " ; " + SAFE_ECTO),
        ("Rails", "`add_column :users, :plan, :text, default: \"free\", null: false`", RAILS_GUIDE + " ; " + STRONG),
        ("Django", "`AddField(\"user\", \"plan\", models.TextField(db_default=\"free\"))` (Django 5.0+; a plain "
                   "`default=` is set for the existing rows, then dropped: old code inserting without the "
                   "column fails)", DJ_DB_DEFAULT),
        ("Alembic", "`op.add_column(\"users\", sa.Column(\"plan\", sa.Text(), nullable=False, "
                    "server_default=\"free\"))` (`server_default`, not `default`, reaches the database)", AL_OPS))
    add("batched backfill, outside the DDL transaction", "`UPDATE ... WHERE id BETWEEN lo AND hi`, one short "
        "transaction per batch, a pause between batches",
        ("Ecto", "its own migration with `@disable_ddl_transaction true` and `@disable_migration_lock true`, "
                 "updating one batch at a time (`repo().update_all(...)`)", ECTO_BACKFILL),
        ("Rails", "`disable_ddl_transaction!`; `User.unscoped.in_batches(of: 10000) { |r| r.update_all ...; "
                  "sleep(0.01) }`", STRONG),
        ("Django", "`atomic = False`; `RunPython` looping over batches, each in `transaction.atomic()`", DJ_ATOMIC),
        ("Alembic", "inside `op.get_context().autocommit_block()`, one `op.execute(UPDATE ...)` per batch "
                    "(not documented as a recipe: the kit's, on the documented autocommit block)", AL_AUTOCOMMIT))
    add("lock_timeout (and retry)", "`SET lock_timeout = '...'` before the DDL; retry with backoff on 55P03",
        ("Ecto", "`def after_begin, do: repo().query!(\"SET LOCAL lock_timeout TO '2s'\")` (the callback is "
                 "documented; the SQL in it is the kit's)", ECTO_BEGIN),
        ("Rails", "`StrongMigrations.lock_timeout = 10.seconds`; `StrongMigrations.lock_timeout_retries = 3`", STRONG),
        ("Django", "first operation `migrations.RunSQL(\"SET LOCAL lock_timeout = '2s'\")` (not documented: no "
                   "setting of Django's; `RunSQL` is)", DJ_OPS),
        ("Alembic", "`op.execute(\"SET LOCAL lock_timeout = '2s'\")` first (not documented: no option of "
                    "Alembic's; `op.execute` is)", AL_OPS))
    add("advisory migration lock",
        "`SELECT pg_advisory_lock(...)` around the whole run (`zdlab.rollout.migration_lock`)",
        ("Ecto", "`config :my_app, MyApp.Repo, migration_lock: :pg_advisory_lock` (ecto_sql 3.9+; the default "
                 "`:table_lock` holds a transaction, which CONCURRENTLY cannot run in)", ECTO_PG),
        ("Rails", "built in: the migrator takes an advisory lock (`with_advisory_lock`); `advisory_locks: false` in "
                  "database.yml turns it off", RAILS_LOCK + " ; " + RAILS_LOCK_OFF),
        ("Django", "none built in (not documented: run `migrate` from one Job, or take `pg_advisory_lock` yourself "
                   "before it)", DJ_ATOMIC),
        ("Alembic", "none built in (not documented: take `pg_advisory_lock` in env.py before "
                    "`context.run_migrations()`)", AL_TUTORIAL))
    return r


LINES = _lines()
TOOLS = ("Ecto", "Rails", "Django", "Alembic")


def markdown() -> str:
    """The table: one line per recipe and tool, the SQL it produces, and the page it was checked against."""
    head = ["| recipe | SQL the kit runs | tool | how it is written | source |", "|---|---|---|---|---|"]
    rows = [f"| {x.recipe} | {x.sql} | {x.tool} | {x.written.replace('|', '&#124;')} | "
            + " ; ".join(f"<{u.strip()}>" for u in x.source.split(" ; ")) + " |" for x in LINES]
    return "\n".join(head + rows)


def show() -> None:
    """The table in a notebook (Markdown), printed elsewhere."""
    try:
        from IPython.display import Markdown, display
    except ImportError:
        print(markdown())
        return
    display(Markdown(markdown()))


DOC_HEAD = """# The course's recipes in Ecto, Rails, Django and Alembic

Each safe recipe of the course, the SQL it comes down to (what the kit runs and measures under
traffic), and how it is written in four migration tools. Every line names the page it was
checked against. **The kit cannot run these tools**: it measures the SQL; check what your tool
sends with its own dry run (`mix ecto.migrate --log-migrations-sql`, `rails db:migrate` with the
log, `manage.py sqlmigrate`, `alembic upgrade --sql`). A line marked *not documented* is the kit's
own suggestion where the tool has no such feature. Notebook 06 shows the same table
(`zdlab.frameworks`, from which this file is written: `python -m zdlab.frameworks > docs/frameworks.md`).

"""


if __name__ == "__main__":
    print(DOC_HEAD + markdown())
