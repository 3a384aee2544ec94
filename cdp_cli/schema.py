"""The store's schema as numbered migrations: each runs once, in order, inside one
transaction, and is recorded in the store (store.migrate applies the ones it has not seen).
A change to the schema is a new migration at the end; a released one never changes."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable

from cdp_cli.canonical import KINDS, SQL_TYPES, Kind, builtin_values
from cdp_cli.sqlitelib import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[int, str, Migration]] = []


def migration(version: int) -> Callable[[Migration], Migration]:
    """Register a schema change; versions run once each, in order, and are recorded."""

    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((version, fn.__name__, fn))
        MIGRATIONS.sort(key=lambda m: m[0])
        return fn

    return register


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: executescript would commit the migration's transaction."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):  # ends with ';', comments allowed after it
            conn.execute(statement)
            statement = ""
    if statement.strip() and not all(
        s.strip().startswith("--") or not s.strip() for s in statement.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement in a migration: {statement[:60]!r}")


def kind_table_sql(kind: Kind) -> str:
    columns = ",\n  ".join(f"{f.name} {SQL_TYPES[f.type]}" for f in kind.all_fields)
    return f"""CREATE TABLE {kind.table} (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL,
  key TEXT NOT NULL,
  {columns},
  attrs TEXT,
  identity_key INTEGER,  -- hash of the raw identity fields; see identity.identity_key
  batch_id INTEGER NOT NULL REFERENCES batches(id),
  line INTEGER,
  UNIQUE (source, key)
)"""


@migration(1)
def create_ingest_tables(db: sqlite_utils.Database) -> None:
    conn = db.conn
    conn.execute(
        """CREATE TABLE batches (
  id INTEGER PRIMARY KEY,
  source TEXT NOT NULL,
  kind TEXT NOT NULL,
  file TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  encoding TEXT,
  status TEXT NOT NULL,   -- running, done, failed, aborted
  pid INTEGER,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  rows_read INTEGER NOT NULL DEFAULT 0,
  rows_inserted INTEGER NOT NULL DEFAULT 0,
  rows_updated INTEGER NOT NULL DEFAULT 0,
  rows_unchanged INTEGER NOT NULL DEFAULT 0,
  rows_rejected INTEGER NOT NULL DEFAULT 0,
  rows_skipped INTEGER NOT NULL DEFAULT 0,
  error TEXT
)"""
    )
    conn.execute("CREATE INDEX batches_source_sha256 ON batches (source, sha256)")
    conn.execute(
        """CREATE TABLE rejects (
  id INTEGER PRIMARY KEY,
  batch_id INTEGER NOT NULL REFERENCES batches(id),
  source TEXT NOT NULL,
  line INTEGER,
  problem TEXT NOT NULL,  -- a short code to group by: missing_key, bad_number, ...
  field TEXT,
  reason TEXT NOT NULL,
  raw TEXT
)"""
    )
    conn.execute("CREATE INDEX rejects_batch ON rejects (batch_id)")
    for kind in KINDS.values():
        conn.execute(kind_table_sql(kind))
        conn.execute(f"CREATE INDEX {kind.table}_identity ON {kind.table} (identity_key)")
    # Items live inside their order (one row, one transaction); this view lists them for SQL.
    conn.execute(
        """CREATE VIEW order_items AS
SELECT o.id AS order_row, o.source, o.key AS order_key, o.order_id, o.ordered_at,
       i.key AS position,
       i.value ->> '$.sku' AS sku, i.value ->> '$.name' AS name,
       i.value ->> '$.category' AS category, i.value ->> '$.price' AS price,
       i.value ->> '$.quantity' AS quantity
FROM orders o, json_each(o.items) i"""
    )


@migration(2)
def create_identity_tables(db: sqlite_utils.Database) -> None:
    _run_script(
        db.conn,
        """
CREATE TABLE identity_keys (
  key INTEGER PRIMARY KEY,      -- the identity_key of source rows
  one_id TEXT,                  -- NULL when nothing on it can identify anyone
  resolved_at TEXT NOT NULL
);
CREATE INDEX identity_keys_one_id ON identity_keys (one_id);
CREATE TABLE identifiers (
  id INTEGER PRIMARY KEY,
  type TEXT NOT NULL,
  value TEXT NOT NULL,          -- normalized: E.164 phone, lower-case IDNA email, ...
  detail TEXT,                  -- a phone's type: mobile, fixed_line, ...
  one_id TEXT,                  -- NULL when its links were refused
  status TEXT NOT NULL,         -- linked or refused
  reason TEXT,
  UNIQUE (type, value)
);
CREATE INDEX identifiers_one_id ON identifiers (one_id);
CREATE TABLE key_identifiers (
  key INTEGER NOT NULL,
  identifier_id INTEGER NOT NULL,
  PRIMARY KEY (key, identifier_id)
) WITHOUT ROWID;
CREATE INDEX key_identifiers_identifier ON key_identifiers (identifier_id);
CREATE TABLE unusable_values (  -- identity values on records that identify no one, and why
  key INTEGER NOT NULL,
  type TEXT NOT NULL,
  raw TEXT NOT NULL,
  reason TEXT NOT NULL
);
CREATE INDEX unusable_values_key ON unusable_values (key);
CREATE TABLE refused_links (    -- links a guard refused, for `cdp resolve --explain`
  key INTEGER NOT NULL,
  identifier_id INTEGER NOT NULL,
  reason TEXT NOT NULL
);
CREATE INDEX refused_links_key ON refused_links (key);
CREATE TABLE id_history (
  id INTEGER PRIMARY KEY,
  one_id TEXT NOT NULL,         -- the one_id this event happened to
  event TEXT NOT NULL,          -- created, merged (into other_one_id), split (from other_one_id),
                                -- removed (no record identifies anyone any more)
  other_one_id TEXT,
  run_id INTEGER NOT NULL,
  at TEXT NOT NULL
);
CREATE INDEX id_history_one_id ON id_history (one_id);
CREATE INDEX id_history_other ON id_history (other_one_id);
CREATE TABLE resolve_runs (
  id INTEGER PRIMARY KEY,
  mode TEXT NOT NULL,
  through_batch INTEGER NOT NULL,   -- every batch up to this one is resolved
  rules TEXT NOT NULL,              -- fingerprint of the identity rules it ran with
  started_at TEXT NOT NULL,
  finished_at TEXT NOT NULL,
  result TEXT NOT NULL
);
CREATE TABLE one_id_sequence (n INTEGER NOT NULL);
INSERT INTO one_id_sequence VALUES (0);
CREATE TABLE profiles (
  one_id TEXT PRIMARY KEY,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  known INTEGER NOT NULL,       -- 0 for an anonymous profile: a device and nothing else
  name TEXT, gender TEXT, birthday TEXT, city TEXT,
  phones TEXT, emails TEXT,     -- JSON arrays of normalized values
  identifiers TEXT,             -- JSON: {type: [values]}
  first_seen TEXT, last_seen TEXT,
  sources TEXT,                 -- JSON array of the sources its records come from
  records INTEGER NOT NULL,
  lineage TEXT                  -- JSON: where each golden value came from
);
""",
    )


@migration(3)
def create_profile_views(db: sqlite_utils.Database) -> None:
    """Plain views, so the store browses well in Datasette or sqlite-utils."""
    _run_script(
        db.conn,
        """
CREATE VIEW id_mapping AS
  SELECT 'customers' AS kind, t.source, t.key, k.one_id FROM customers t
    LEFT JOIN identity_keys k ON k.key = t.identity_key
  UNION ALL SELECT 'orders', t.source, t.key, k.one_id FROM orders t
    LEFT JOIN identity_keys k ON k.key = t.identity_key
  UNION ALL SELECT 'events', t.source, t.key, k.one_id FROM events t
    LEFT JOIN identity_keys k ON k.key = t.identity_key
  UNION ALL SELECT 'consents', t.source, t.key, k.one_id FROM consents t
    LEFT JOIN identity_keys k ON k.key = t.identity_key
  UNION ALL SELECT 'coupons', t.source, t.key, k.one_id FROM coupons t
    LEFT JOIN identity_keys k ON k.key = t.identity_key;
CREATE VIEW profile_orders AS
  SELECT k.one_id, o.* FROM orders o JOIN identity_keys k ON k.key = o.identity_key;
CREATE VIEW profile_events AS
  SELECT k.one_id, e.* FROM events e JOIN identity_keys k ON k.key = e.identity_key;
CREATE VIEW profile_identifiers AS
  SELECT one_id, type, value, detail FROM identifiers WHERE status = 'linked';
""",
    )


@migration(4)
def track_replaced_identity_keys(db: sqlite_utils.Database) -> None:
    """When a re-ingested row changes its identity fields, remember the key it had, so the
    next incremental resolve can drop a key no row carries any more (a member's old phone
    must stop linking them)."""
    db.conn.execute(
        "CREATE TABLE replaced_identity_keys (old_key INTEGER NOT NULL, new_key INTEGER, "
        "PRIMARY KEY (old_key, new_key))"
    )
    for kind in KINDS.values():
        db.conn.execute(
            f"""CREATE TRIGGER {kind.table}_identity_key_replaced
AFTER UPDATE OF identity_key ON {kind.table}
WHEN old.identity_key IS NOT NULL AND old.identity_key IS NOT new.identity_key
BEGIN
  INSERT OR IGNORE INTO replaced_identity_keys VALUES (old.identity_key, new.identity_key);
END"""
        )


@migration(5)
def create_tag_tables(db: sqlite_utils.Database) -> None:
    _run_script(
        db.conn,
        """
CREATE TABLE feature_runs (id INTEGER PRIMARY KEY, as_of TEXT NOT NULL, computed_at TEXT NOT NULL);
CREATE TABLE profile_tags (     -- the current value of every tag a customer has
  one_id TEXT NOT NULL,
  tag TEXT NOT NULL,
  value TEXT NOT NULL,          -- 'true' for a when: tag
  since TEXT NOT NULL,          -- when it took this value
  PRIMARY KEY (one_id, tag)
) WITHOUT ROWID;
CREATE INDEX profile_tags_tag ON profile_tags (tag, value);
CREATE TABLE tag_changes (      -- every change, for journeys' triggers and reports
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL,
  one_id TEXT NOT NULL,
  tag TEXT NOT NULL,
  change TEXT NOT NULL,         -- added, removed or changed
  old_value TEXT,
  new_value TEXT,
  at TEXT NOT NULL
);
CREATE INDEX tag_changes_tag ON tag_changes (tag, at);
CREATE INDEX tag_changes_one_id ON tag_changes (one_id);
CREATE TABLE tag_runs (
  id INTEGER PRIMARY KEY, as_of TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
  tags TEXT NOT NULL, result TEXT
);
""",
    )


@migration(6)
def create_journey_tables(db: sqlite_utils.Database) -> None:
    _run_script(
        db.conn,
        """
CREATE TABLE journey_runs (
  id INTEGER PRIMARY KEY,
  journey TEXT NOT NULL,
  now TEXT NOT NULL,              -- the run's clock (--now, or the time it started)
  tag_cursor INTEGER NOT NULL,    -- tag_changes seen up to this id
  started_at TEXT NOT NULL,
  finished_at TEXT,
  result TEXT
);
CREATE INDEX journey_runs_journey ON journey_runs (journey, id);
CREATE TABLE journey_enrolments (
  id INTEGER PRIMARY KEY,
  journey TEXT NOT NULL,
  one_id TEXT NOT NULL,
  enrolment INTEGER NOT NULL,     -- 1 the first time a customer enters, 2 on re-entry, ...
  holdout INTEGER NOT NULL,       -- 1: followed for the goal, sent nothing
  variant TEXT,                   -- the split variant, by a hash of journey and one_id
  status TEXT NOT NULL,           -- active, completed, converted, exited
  step TEXT,                      -- the key of the current step
  waiting INTEGER NOT NULL DEFAULT 0,  -- 1 once the current wait step has started
  next_at TEXT,                   -- when the current step is due
  entered_at TEXT NOT NULL,
  ended_at TEXT,
  converted_at TEXT,
  UNIQUE (journey, one_id, enrolment)
);
CREATE INDEX journey_enrolments_due ON journey_enrolments (journey, status, next_at);
CREATE INDEX journey_enrolments_one_id ON journey_enrolments (one_id);
CREATE TABLE messages (         -- the outbox: one row per enrolment and send step, ever
  id TEXT PRIMARY KEY,            -- journey:enrolment id:step key
  run_id INTEGER NOT NULL,
  journey TEXT NOT NULL,
  enrolment_id INTEGER NOT NULL,
  one_id TEXT NOT NULL,
  step TEXT NOT NULL,
  channel TEXT,
  status TEXT NOT NULL,           -- queued, written (to an outbound file) or skipped
  reason TEXT,                    -- why it was skipped
  address TEXT,                   -- the phone, email, openid or device it goes to
  payload TEXT,                   -- JSON: what the channel sends
  coupon_code TEXT,
  cost REAL,
  transactional INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL,
  file TEXT,
  written_at TEXT
);
CREATE INDEX messages_one_id ON messages (one_id, created_at);
CREATE INDEX messages_pending ON messages (status, run_id);
CREATE TABLE coupon_issues (      -- codes drawn from a pool; the coupons table stays as ingested
  code TEXT PRIMARY KEY,
  campaign TEXT NOT NULL,
  one_id TEXT NOT NULL,
  message_id TEXT NOT NULL,
  issued_at TEXT NOT NULL
);
""",
    )


@migration(7)
def extend_journey_tables(db: sqlite_utils.Database) -> None:
    """Tracked links, the global control group, broadcasts and coupon pool lookups."""
    _run_script(
        db.conn,
        """
-- a message's own short code and tracked URL (UTM parameters and the code), if it has a link
ALTER TABLE messages ADD COLUMN link_code TEXT;
ALTER TABLE messages ADD COLUMN link_url TEXT;
CREATE INDEX messages_link_code ON messages (link_code);
-- 1: the customer is in the global control group of cdp.yaml: followed, never messaged by a
-- marketing journey
ALTER TABLE journey_enrolments ADD COLUMN control INTEGER NOT NULL DEFAULT 0;
-- coupon pools are drawn in code order, and a drawn code is looked up for reminders
CREATE INDEX coupons_campaign ON coupons (campaign, code);
CREATE INDEX coupons_code ON coupons (code);
CREATE TABLE journey_broadcasts (  -- each scheduled occurrence of a broadcast fires once
  journey TEXT NOT NULL,
  occurrence TEXT NOT NULL,        -- the scheduled time, in the project's timezone
  run_id INTEGER NOT NULL,
  enrolled INTEGER NOT NULL,
  PRIMARY KEY (journey, occurrence)
);
""",
    )


@migration(8)
def create_tombstones(db: sqlite_utils.Database) -> None:
    """What `cdp forget` leaves behind: keyed hashes of a forgotten person's identifiers, so that
    no re-ingested export brings them back, and the store's own key for those hashes."""
    _run_script(
        db.conn,
        """
CREATE TABLE tombstone_salt (salt TEXT NOT NULL);  -- one row: the HMAC key, random per store
CREATE TABLE tombstones (
  hash TEXT PRIMARY KEY,          -- HMAC-SHA256(salt, type 0x1f normalized value), hex
  type TEXT NOT NULL,             -- phone, email, member_no, ...: which normalizer reads it
  forgotten_at TEXT NOT NULL
) WITHOUT ROWID;
""",
    )
    db.conn.execute("INSERT INTO tombstone_salt VALUES (?)", (secrets.token_hex(32),))


@migration(9)
def narrow_message_indexes(db: sqlite_utils.Database) -> None:
    """Index only the messages that are looked up: the queued ones (a file still to write) and
    those with a tracked link. Every written message used to stay in both indexes."""
    _run_script(
        db.conn,
        """
DROP INDEX messages_pending;
CREATE INDEX messages_pending ON messages (run_id) WHERE status = 'queued';
DROP INDEX messages_link_code;
CREATE INDEX messages_link_code ON messages (link_code) WHERE link_code IS NOT NULL;
""",
    )


@migration(10)
def record_wait_reasons(db: sqlite_utils.Database) -> None:
    """Why an enrolment waits at a send step (quiet hours, the frequency cap, or a problem of the
    project's), so that `cdp journey status` can say it; NULL at a wait step."""
    _run_script(db.conn, "ALTER TABLE journey_enrolments ADD COLUMN wait_reason TEXT;")


@migration(11)
def check_stored_consents(db: sqlite_utils.Database) -> None:
    """Consents gain a purpose. Rows stored before cdp checked a consent's channel, status and
    an opt-in's time are checked now: a written form cdp knows is mapped (短信 -> sms), and
    a row it cannot act on moves to rejects with its reason, instead of being ignored."""
    conn, kind = db.conn, KINDS["consents"]
    if "purpose" not in {row[1] for row in conn.execute("PRAGMA table_info(consents)")}:
        conn.execute("ALTER TABLE consents ADD COLUMN purpose TEXT")
    checks = []
    for name in ("channel", "status"):
        spec = kind.field(name)
        assert spec is not None
        known = builtin_values(spec, kind)
        for (written,) in conn.execute(
            f"SELECT DISTINCT {name} FROM consents WHERE {name} IS NOT NULL"
        ).fetchall():
            mapped = known.get(written.strip().casefold())
            if mapped is not None and mapped != written:
                conn.execute(f"UPDATE consents SET {name} = ? WHERE {name} = ?", (mapped, written))
        choices = ", ".join(f"'{c}'" for c in spec.choices)  # constants of ours
        checks.append(
            (f"{name} IS NULL", "missing", name, f"{name}: missing"),
        )
        checks.append(
            (
                f"{name} NOT IN ({choices})",
                "unknown_value",
                name,
                f"{name}: ' || quote({name}) || ' is not one of {', '.join(spec.choices)}",
            )
        )
    checks.append(
        (
            "status = 'opt_in' AND consented_at IS NULL",
            "missing",
            "consented_at",
            "consented_at: missing (required when opt_in)",
        )
    )
    for where, problem, field, reason in checks:
        rows = f"SELECT id FROM consents WHERE {where}"
        conn.execute(
            "INSERT INTO rejects (batch_id, source, line, problem, field, reason, raw) "
            f"SELECT batch_id, source, line, ?, ?, '{reason} (stored before cdp checked it)', "
            "json_object('channel', channel, 'status', status, 'consented_at', consented_at, "
            "'phone', phone, 'email', email, 'member_no', member_no, 'reason', reason) "
            f"FROM consents WHERE id IN ({rows})",
            (problem, field),
        )
        conn.execute(
            "UPDATE batches SET rows_rejected = rows_rejected + n FROM (SELECT batch_id, "
            f"count(*) AS n FROM consents WHERE id IN ({rows}) GROUP BY 1) AS moved "
            "WHERE batches.id = moved.batch_id"
        )
        conn.execute(f"DELETE FROM consents WHERE id IN ({rows})")


@migration(12)
def create_export_log(db: sqlite_utils.Database) -> None:
    """The export log (exports.py): every file written with customers in it, and who was in
    each, so that `cdp forget` can name the files it cannot erase."""
    _run_script(
        db.conn,
        """
CREATE TABLE exports (
  id INTEGER PRIMARY KEY,
  path TEXT NOT NULL,             -- the file, resolved
  written_at TEXT NOT NULL,
  kind TEXT NOT NULL,             -- segment, hashed_segment, id_mapping, outbound
  audience TEXT,                  -- the segment's name or rule, the journey and channel
  rows INTEGER NOT NULL
);
CREATE TABLE export_members (     -- who was in each file: the link `cdp forget` erases
  one_id TEXT NOT NULL,
  export_id INTEGER NOT NULL REFERENCES exports(id),
  PRIMARY KEY (one_id, export_id)
) WITHOUT ROWID;
""",
    )


@migration(13)
def fingerprint_tag_runs(db: sqlite_utils.Database) -> None:
    """What a tag run read (tags.tag_inputs), so that a run with nothing new is skipped."""
    _run_script(db.conn, "ALTER TABLE tag_runs ADD COLUMN inputs TEXT;")


@migration(14)
def drop_unused_indexes(db: sqlite_utils.Database) -> None:
    """Indexes no query of cdp uses, by EXPLAIN QUERY PLAN over every statement the test suite's
    stages run (issue 13): rejects_batch. Rejects are read whole or by id, and batches are
    never deleted, so the foreign key never looks rejects up by batch either; every reject
    paid for an index entry nothing reads."""
    db.conn.execute("DROP INDEX IF EXISTS rejects_batch")


@migration(15)
def index_events_by_key_and_type(db: sqlite_utils.Database) -> None:
    """events_identity on (identity_key, event, occurred_at): `cdp tag` counts every key's
    events by type in one walk of the index, with no sort and no row read (issue 14); lookups
    by identity_key use it as before."""
    _run_script(
        db.conn,
        "DROP INDEX IF EXISTS events_identity;\n"
        "CREATE INDEX events_identity ON events (identity_key, event, occurred_at);",
    )


@migration(16)
def count_customers_each_feature_run_reads(db: sqlite_utils.Database) -> None:
    """How many customers each feature run read again: all on a full run, those that can
    have changed on an incremental one (features.compute_features)."""
    _run_script(db.conn, "ALTER TABLE feature_runs ADD COLUMN recomputed INTEGER;")


@migration(17)
def create_prediction_tables(db: sqlite_utils.Database) -> None:
    """Predictive scores (cdp predict) and the models they came from: each score row names its
    model, and each model keeps its version, fit date, as-of date, inputs and evaluation, so a
    score can always be traced (cdp_cli/predict/)."""
    _run_script(
        db.conn,
        """
CREATE TABLE models (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL,              -- predict: the CLV, churn and propensity models of one fit
  version TEXT NOT NULL,           -- cdp's, and the libraries' versions, as JSON
  fitted_at TEXT NOT NULL,
  as_of TEXT NOT NULL,             -- the history it learned from ends on this day
  inputs TEXT NOT NULL,            -- JSON: settings, customers, orders, data fingerprint
  parameters TEXT NOT NULL,        -- JSON: the fitted parameters and coefficients
  evaluation TEXT                  -- JSON: how it scored on its own held-out data
);
CREATE TABLE prediction_runs (
  id INTEGER PRIMARY KEY,
  model_id INTEGER NOT NULL REFERENCES models(id),
  as_of TEXT NOT NULL,
  scored_at TEXT NOT NULL,
  inputs TEXT NOT NULL,            -- fingerprint of the data scored (cdp run: rescore on change)
  customers INTEGER NOT NULL
);
CREATE TABLE predictions (         -- one row per scored customer: the latest scores
  one_id TEXT PRIMARY KEY,
  model_id INTEGER NOT NULL,
  p_alive REAL,
  expected_orders_30d REAL,
  expected_orders_90d REAL,
  expected_orders_365d REAL,
  expected_value_365d REAL,
  lifetime_value REAL,             -- expected value over predict.horizon_days
  churn_risk REAL
) WITHOUT ROWID;
CREATE TABLE prediction_propensities (
  one_id TEXT NOT NULL,
  category TEXT NOT NULL,
  model_id INTEGER NOT NULL,
  probability REAL NOT NULL,
  PRIMARY KEY (one_id, category)
) WITHOUT ROWID;
""",
    )


@migration(18)
def create_match_tables(db: sqlite_utils.Database) -> None:
    """Probabilistic matching (identity/match.py): the records it compares, the links it made
    and why, the pairs waiting for a person, their decisions, and the trained model."""
    _run_script(
        db.conn,
        """
CREATE TABLE match_records (      -- one per identity key carrying match fields
  key INTEGER PRIMARY KEY,
  source TEXT NOT NULL,
  in_scope INTEGER NOT NULL,      -- 1: its source is one identity.match.sources names
  shown TEXT NOT NULL,            -- the fields as written (JSON), for --review
  compared TEXT NOT NULL          -- the fields as the model compares them (JSON)
);
CREATE TABLE match_blocks (       -- each record's value per blocking rule: whom a new one meets
  rule INTEGER NOT NULL,          -- its place in identity.match.blocking
  block TEXT NOT NULL,            -- the rule's fields as compared, joined
  key INTEGER NOT NULL,
  PRIMARY KEY (rule, block, key)
) WITHOUT ROWID;
CREATE TABLE match_links (        -- pairs above the threshold, or accepted by a person
  key_a INTEGER NOT NULL,
  key_b INTEGER NOT NULL,         -- key_a < key_b
  probability REAL NOT NULL,
  weight REAL NOT NULL,           -- the match weight: log2 of the Bayes factor, all fields
  fields TEXT NOT NULL,           -- JSON: per field, its agreement level and its weight
  decided_by TEXT NOT NULL,       -- model, or person (accepted)
  status TEXT NOT NULL,           -- linked, or refused (a guard or a cannot-link)
  reason TEXT,
  run_id INTEGER NOT NULL,
  PRIMARY KEY (key_a, key_b)
) WITHOUT ROWID;
CREATE INDEX match_links_b ON match_links (key_b);
CREATE TABLE match_reviews (      -- pairs between review_threshold and threshold, undecided
  id INTEGER PRIMARY KEY,
  key_a INTEGER NOT NULL,
  key_b INTEGER NOT NULL,
  probability REAL NOT NULL,
  weight REAL NOT NULL,
  fields TEXT NOT NULL,
  run_id INTEGER NOT NULL,
  UNIQUE (key_a, key_b)
);
CREATE TABLE match_decisions (    -- a person's word on a pair; every later run honours it
  key_a INTEGER NOT NULL,
  key_b INTEGER NOT NULL,
  decision TEXT NOT NULL,         -- accepted, or rejected (a permanent cannot-link)
  decided_at TEXT NOT NULL,
  PRIMARY KEY (key_a, key_b)
) WITHOUT ROWID;
CREATE TABLE match_models (       -- the trained model per match settings (JSON of Splink)
  fingerprint TEXT PRIMARY KEY,
  model TEXT NOT NULL,
  trained_at TEXT NOT NULL,
  records INTEGER NOT NULL
);
""",
    )


@migration(19)
def record_each_replaced_key_pair_once(db: sqlite_utils.Database) -> None:
    """The triggers of migration 4 skip a pair already recorded by a WHERE, not by OR IGNORE:
    an upsert (ingest's ON CONFLICT … DO UPDATE) makes SQLite abort its triggers' conflicts,
    so a phone changed A → B → A → B between two resolves failed the file."""
    for kind in KINDS.values():
        _run_script(db.conn, _identity_key_replaced_trigger(kind.table))


def _identity_key_replaced_trigger(table: str, also: str = "") -> str:
    """The trigger that notes, for resolve, the key an updated row of `table` left (and runs
    `also`, more statements, with it)."""
    return f"""DROP TRIGGER IF EXISTS {table}_identity_key_replaced;
CREATE TRIGGER {table}_identity_key_replaced
AFTER UPDATE OF identity_key ON {table}
WHEN old.identity_key IS NOT NULL AND old.identity_key IS NOT new.identity_key
BEGIN
  INSERT INTO replaced_identity_keys SELECT old.identity_key, new.identity_key
  WHERE NOT EXISTS (SELECT 1 FROM replaced_identity_keys
                    WHERE old_key = old.identity_key AND new_key IS new.identity_key);{also}
END;"""


@migration(20)
def index_tag_changes_by_tag_alone(db: sqlite_utils.Database) -> None:
    """tag_changes_tag on (tag) instead of (tag, at) (issue 14): every reader asks for a tag's
    changes after an id (journeys' triggers, a tag run's own counts) or all of them (the
    lifecycle report), which the row id in the index answers; the timestamp in each of
    millions of entries made a first tag run's index sort the dearest step of the run."""
    _run_script(
        db.conn,
        "DROP INDEX IF EXISTS tag_changes_tag;\nCREATE INDEX tag_changes_tag ON tag_changes (tag);",
    )


@migration(21)
def record_each_journey_runs_goal_check(db: sqlite_utils.Database) -> None:
    """What a journey run checked conversions against (issue 14): its goal and the last batch
    it saw. The next run with the same goal checks only what can have changed since, where
    it checked every open enrolment against every goal event each run (27 s of a 50 s rerun
    at 1M customers). A run without them (before this) makes the next one check everything."""
    _run_script(
        db.conn,
        "ALTER TABLE journey_runs ADD COLUMN goal TEXT;\n"
        "ALTER TABLE journey_runs ADD COLUMN goal_batch INTEGER;",
    )


@migration(22)
def record_keys_rows_left_for_features(db: sqlite_utils.Database) -> None:
    """The identity keys that re-ingested rows left, kept for the next tag run (issue 14): an
    export that updates rows in place (a CRM export does every day) read every customer
    again, because the customer a row left could not be told once resolve had used the keys
    (replaced_identity_keys is resolve's, emptied by it). A tag run reads the customers of
    these keys again and empties the table. Pairs are skipped by a WHERE, as migration 19's."""
    db.conn.execute("CREATE TABLE feature_left_keys (key INTEGER PRIMARY KEY)")
    also = """
  INSERT INTO feature_left_keys SELECT old.identity_key
  WHERE NOT EXISTS (SELECT 1 FROM feature_left_keys WHERE key = old.identity_key);"""
    for kind in KINDS.values():
        _run_script(db.conn, _identity_key_replaced_trigger(kind.table, also))


@migration(23)
def record_where_each_batch_inserted(db: sqlite_utils.Database) -> None:
    """The largest row id of its table before each batch wrote (issue 13): every row the batch
    inserted has a larger one, so that resolve reads a batch's new rows by their ids where it
    scanned the whole table for their batch (26 ms of a 0.3 s incremental run at 100k
    records; `cdp consent` records it too). NULL where not known (batches before this):
    resolve scans then, as it does after a batch that updated rows in place."""
    db.conn.execute("ALTER TABLE batches ADD COLUMN inserted_after INTEGER")


@migration(24)
def index_available_coupon_codes(db: sqlite_utils.Database) -> None:
    """coupons_available: a pool's available codes in code order (issue 14). A journey's pool
    draws from its lowest code, and through coupons_campaign it walked every issued and
    redeemed code of the campaign first, each a row read: 2 s a day at 1M for 37 blocks."""
    db.conn.execute(
        "CREATE INDEX coupons_available ON coupons (campaign, code) WHERE status = 'available'"
    )


@migration(25)
def index_customers_by_key_and_registration(db: sqlite_utils.Database) -> None:
    """customers_identity on (identity_key, registered_at): a tag run's earliest registration
    per customer reads the index alone, in key order, where it read every customer row (their
    attrs and identifiers with it) and looked up each key at random: 2.0 s against 7.5 s at
    1M customers (issue 14). Lookups by identity_key use it as before."""
    _run_script(
        db.conn,
        "DROP INDEX IF EXISTS customers_identity;\n"
        "CREATE INDEX customers_identity ON customers (identity_key, registered_at);",
    )
