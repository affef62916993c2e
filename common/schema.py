"""Canonical event schema, column names, behaviour vocabulary and quarantine reason codes.

Every job and test names columns through these constants, never through string literals, so a
rename happens in one place.
"""

from __future__ import annotations

from pyspark.sql import types as T

# --- canonical event columns (silver/events) -------------------------------------------------
EVENT_ID = "event_id"
USER_ID = "user_id"
ITEM_ID = "item_id"
BEHAVIOR = "behavior"
VALUE = "value"
TS = "ts"
SESSION_ID = "session_id"
CATEGORY_ID = "category_id"
SOURCE = "source"
RAW = "raw"
EVENT_DATE = "event_date"

# --- lineage columns ---------------------------------------------------------------------------
BATCH_ID = "batch_id"
SOURCE_FILE = "source_file"
INGEST_TS = "ingest_ts"
REASONS = "reasons"
STAGE = "stage"

# --- indices -------------------------------------------------------------------------------------
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"

# --- gold ------------------------------------------------------------------------------------------
CONFIDENCE = "confidence"
FIRST_TS = "first_ts"
LAST_TS = "last_ts"
RATING = "rating"
PROTOCOL = "protocol"
SPLIT = "split"
# values of SPLIT in gold/splits, and the protocols that write them
TRAIN, VALID, TEST = "train", "valid", "test"
PROTOCOLS: tuple[str, ...] = ("stratified", "temporal", "leave_last_out", "cold_items")

# --- models, recommendations, evaluation ------------------------------------------------------------
RUN_ID = "run_id"
MODEL = "model"
IDX = "idx"
FACTORS = "factors"
RANK = "rank"
SCORE = "score"
DATASET = "dataset"
TARGET = "target"
K = "k"
METRIC = "metric"
CREATED_AT = "created_at"

# --- item catalogue (silver/items) and text vectors --------------------------------------------------
TITLE = "title"
TEXT = "text"  # what the language model reads: title, category path, brand, tags, attributes
CATEGORY_PATH = "category_path"  # array<string>, broadest first (genres of a film)
BRAND = "brand"
ATTRIBUTES = "attributes"  # map<string,string>: source-specific fields (release date, price, ...)
VECTOR = "vector"
TEXT_HASH = "text_hash"  # sha256 of the text the vector was computed from
WEIGHTS_SHA = "weights_sha256"  # sha256 of the model's weights file
N_ITEMS = "n_items"

# --- behaviour vocabulary -----------------------------------------------------------------------
VIEW, CLICK, CART, FAV, PURCHASE, RATING_B = "view", "click", "cart", "fav", "purchase", "rating"
CANONICAL_BEHAVIORS: tuple[str, ...] = (VIEW, CLICK, CART, FAV, PURCHASE, RATING_B)


def count_col(behavior: str) -> str:
    """gold/interactions column holding the raw event count of one behaviour."""
    return f"cnt_{behavior}"


def conf_col(behavior: str) -> str:
    """gold/interactions column holding one behaviour's part of `confidence`."""
    return f"conf_{behavior}"


def amount_col(behavior: str) -> str:
    """gold/interactions column holding one behaviour's undecayed amount (count, sum or mean of
    values, per ``confidence.amount``), from which tuning rebuilds `confidence`."""
    return f"amt_{behavior}"


# --- quarantine reason codes ----------------------------------------------------------------------
MISSING_USER = "missing_user"
MISSING_ITEM = "missing_item"
BAD_TS = "unparseable_ts"
TS_OUT_OF_RANGE = "ts_out_of_range"
UNKNOWN_BEHAVIOR = "unknown_behavior"
BAD_VALUE = "non_numeric_value"
VALUE_OUT_OF_RANGE = "value_out_of_range"
MALFORMED = "malformed_row"
BAD_ENCODING = "bad_encoding"
NO_METADATA = "no_metadata"  # an item row with neither title, text, category nor brand
ID_TOO_LONG = "id_too_long"  # a user / item / session id longer than ingest.max_id_length
BLANK_LINE = "blank_line"  # a line of nothing but whitespace
REPEATED_HEADER = "repeated_header"  # a header line that is not its file's first (concatenated exports)
# the row faults the generator plants (jobs.generate.dirty), one kind per dirty row
REASON_CODES: tuple[str, ...] = (
    MISSING_USER,
    MISSING_ITEM,
    BAD_TS,
    TS_OUT_OF_RANGE,
    UNKNOWN_BEHAVIOR,
    BAD_VALUE,
    VALUE_OUT_OF_RANGE,
    MALFORMED,
    BAD_ENCODING,
)
# codes found by the tests on hand-made files rather than planted by the generator
EDGE_REASON_CODES: tuple[str, ...] = (ID_TOO_LONG, BLANK_LINE, REPEATED_HEADER)
ALL_REASON_CODES: tuple[str, ...] = REASON_CODES + EDGE_REASON_CODES
# the item catalogue's codes (quarantine/items): the event codes that apply, and no_metadata
ITEM_REASON_CODES: tuple[str, ...] = (MISSING_ITEM, MALFORMED, BAD_ENCODING, NO_METADATA)

# --- raw fields every source reader produces (all strings, before typing) ------------------------
RAW_FIELDS: tuple[str, ...] = (
    EVENT_ID,
    USER_ID,
    ITEM_ID,
    BEHAVIOR,
    VALUE,
    TS,
    SESSION_ID,
    CATEGORY_ID,
)
N_FIELDS = "n_fields"  # fields found on the raw line; -1 when the reader could not parse it
# where a line sits in its file (line readers): the file split it was read from, and an id that
# grows along the split; and whether the line reads as the format's header. A file's first header
# is not data (the audit counts it under details.file_headers); any later one is quarantined.
LINE_BLOCK = "_line_block"
LINE_POS = "_line_pos"
IS_HEADER = "_is_header"
LINE_COLUMNS: tuple[str, ...] = (LINE_BLOCK, LINE_POS, IS_HEADER)
USER_TOO_LONG = "_user_too_long"  # ingest.pseudonymize: the raw user id was over max_id_length

# bronze keeps the raw line as read (a Parquet source's row as JSON) and its lineage; the parsed
# fields are derived from it and would double the bytes written. The parsed user id alone is
# kept (null where the line has none; the pseudonym under ingest.pseudonymize), so that
# `reclake forget` finds every line of a user, quarantined ones included, without re-parsing.
BRONZE_SCHEMA = T.StructType(
    [
        T.StructField(RAW, T.StringType()),
        T.StructField(SOURCE, T.StringType()),
        T.StructField(SOURCE_FILE, T.StringType()),
        T.StructField(BATCH_ID, T.StringType()),
        T.StructField(INGEST_TS, T.TimestampType()),
        T.StructField(USER_ID, T.StringType()),
    ]
)

SILVER_SCHEMA = T.StructType(
    [
        T.StructField(EVENT_ID, T.StringType(), False),
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(BEHAVIOR, T.StringType(), False),
        T.StructField(VALUE, T.DoubleType()),
        T.StructField(TS, T.TimestampType(), False),
        T.StructField(SESSION_ID, T.StringType()),
        T.StructField(CATEGORY_ID, T.StringType()),
        T.StructField(SOURCE, T.StringType(), False),
        T.StructField(RAW, T.StringType()),
        T.StructField(BATCH_ID, T.StringType(), False),
        T.StructField(EVENT_DATE, T.DateType(), False),
    ]
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField(BATCH_ID, T.StringType(), False),
        T.StructField(SOURCE, T.StringType()),
        T.StructField(SOURCE_FILE, T.StringType()),
        T.StructField(RAW, T.StringType()),
        T.StructField(REASONS, T.ArrayType(T.StringType(), False), False),
        T.StructField(INGEST_TS, T.TimestampType()),
    ]
)

# quarantine/events: the rejected line, its reasons, and its parsed user id (see BRONZE_SCHEMA)
QUARANTINE_EVENTS_SCHEMA = T.StructType(
    [*QUARANTINE_SCHEMA.fields, T.StructField(USER_ID, T.StringType())]
)

AUDIT_SCHEMA = T.StructType(
    [
        T.StructField(BATCH_ID, T.StringType(), False),
        T.StructField(STAGE, T.StringType(), False),
        T.StructField(SOURCE, T.StringType()),
        T.StructField("rows_in", T.LongType()),
        T.StructField("rows_out", T.LongType()),
        T.StructField("rows_clean_new", T.LongType()),
        T.StructField("rows_duplicate", T.LongType()),
        T.StructField("rows_quarantined", T.LongType()),
        # input rows of users on the suppression list (audit/suppressed_users), never written
        T.StructField("rows_suppressed", T.LongType()),
        T.StructField("details", T.MapType(T.StringType(), T.LongType())),
        T.StructField("seconds", T.DoubleType()),
        T.StructField("created_at", T.TimestampType()),
    ]
)

# the index tables also record the batch that first brought each id (written by ingest)
FIRST_BATCH_ID = "first_batch_id"
# silver/user_index: when `reclake forget` tombstoned the entry (its user_id is then
# TOMBSTONE_PREFIX + user_idx, and the user_idx is never given out again); null otherwise
FORGOTTEN_AT = "forgotten_at"
TOMBSTONE_PREFIX = "forgotten:"
INDEX_SCHEMA = {
    USER_IDX: T.StructType(
        [
            T.StructField(USER_ID, T.StringType(), False),
            T.StructField(USER_IDX, T.IntegerType(), False),
        ]
    ),
    ITEM_IDX: T.StructType(
        [
            T.StructField(ITEM_ID, T.StringType(), False),
            T.StructField(ITEM_IDX, T.IntegerType(), False),
        ]
    ),
}

# audit/suppressed_users: one row per forgotten user, by the sha256 of the id as the lake stores
# it (the pseudonym under ingest.pseudonymize), never the id itself
USER_SHA256 = "user_sha256"
COMPLETED_AT = "completed_at"  # null while a forget of the user has not finished (VACUUM included)
SUPPRESSED_USERS_SCHEMA = T.StructType(
    [
        T.StructField(USER_SHA256, T.StringType(), False),
        T.StructField(FORGOTTEN_AT, T.TimestampType(), False),
        T.StructField(COMPLETED_AT, T.TimestampType()),
    ]
)

SPLIT_COLUMNS: tuple[str, ...] = (PROTOCOL, SPLIT, USER_IDX, ITEM_IDX, CONFIDENCE, TS)
# gold/splits also carries cnt_<b>, conf_<b> and amt_<b> for every behaviour of the vocabulary,
# so a purchase-only target, the influence job's per-behaviour split and a tuning trial's
# confidence rebuilt with other weights (interactions.rebuild_confidence) need no other table.

ITEMS_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(ITEM_IDX, T.IntegerType()),  # null: the item has no events (yet)
        T.StructField(TITLE, T.StringType()),
        T.StructField(TEXT, T.StringType(), False),
        T.StructField(CATEGORY_PATH, T.ArrayType(T.StringType(), False)),
        T.StructField(BRAND, T.StringType()),
        T.StructField(ATTRIBUTES, T.MapType(T.StringType(), T.StringType())),
        T.StructField(SOURCE, T.StringType(), False),
        T.StructField(BATCH_ID, T.StringType(), False),
        T.StructField(INGEST_TS, T.TimestampType()),
    ]
)

# models/text_embeddings: one row per (item_id, model); reclake embed replaces changed rows only
TEXT_EMBEDDINGS_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(ITEM_IDX, T.IntegerType()),  # as known when embedded; models re-join the index
        T.StructField(MODEL, T.StringType(), False),
        T.StructField(WEIGHTS_SHA, T.StringType(), False),
        T.StructField(TEXT_HASH, T.StringType(), False),
        T.StructField(VECTOR, T.ArrayType(T.FloatType(), False), False),
        T.StructField(CREATED_AT, T.TimestampType(), False),
    ]
)

# models/user_text_profiles: one row per (run_id, user_idx)
USER_TEXT_PROFILES_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(N_ITEMS, T.IntegerType(), False),  # train items with a vector behind it
        T.StructField(VECTOR, T.ArrayType(T.FloatType(), False), False),
    ]
)

RECOMMENDATIONS_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(MODEL, T.StringType(), False),
        T.StructField(PROTOCOL, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(RANK, T.IntegerType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(SCORE, T.DoubleType(), False),
    ]
)

# gold/predictions: a run's probability of its task label (e.g. "rating>=4") per held-out pair
PREDICTION = "prediction"
PREDICTIONS_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(MODEL, T.StringType(), False),
        T.StructField(PROTOCOL, T.StringType(), False),
        T.StructField(TARGET, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(PREDICTION, T.DoubleType(), False),
    ]
)

FACTORS_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(IDX, T.IntegerType(), False),
        T.StructField(FACTORS, T.ArrayType(T.FloatType(), False), False),
    ]
)

EVALUATION_SCHEMA = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType(), False),
        T.StructField(MODEL, T.StringType(), False),
        T.StructField(DATASET, T.StringType()),
        T.StructField(PROTOCOL, T.StringType(), False),
        T.StructField(TARGET, T.StringType(), False),
        T.StructField(K, T.IntegerType(), False),
        T.StructField(METRIC, T.StringType(), False),
        T.StructField(VALUE, T.DoubleType()),
        T.StructField(CREATED_AT, T.TimestampType(), False),
    ]
)


def require_columns(df, *cols: str, where: str = "") -> None:
    """Raise a clear error before any work starts when a DataFrame lacks expected columns."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        ctx = f" in {where}" if where else ""
        raise ValueError(f"missing column(s) {missing}{ctx}; have {df.columns}")


# --- raw item fields (jobs/sources/items.py readers, before jobs.ingest_items standardises) ------
DESCRIPTION = "description"  # free text of a catalogue row (generic: items.generic.columns.text)
TAGS = "tags"  # array<string>: user tags (MovieLens tags.csv), most frequent first
LINE = "line"  # a raw line's position in its file: the last line of an item id wins
RAW_ITEM_FIELDS: tuple[str, ...] = (
    ITEM_ID,
    TITLE,
    DESCRIPTION,
    CATEGORY_PATH,
    BRAND,
    TAGS,
    ATTRIBUTES,
)
