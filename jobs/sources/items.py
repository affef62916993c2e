"""Item-catalogue readers for ``reclake ingest-items``, one per format; ``ITEM_READERS[name](spark,
path, cfg) -> (raw item fields, ItemSpec)``.

A reader turns files of one format into *raw item fields*, one row per data line (columns
``schema.RAW_ITEM_FIELDS``): ``item_id``, ``title``, ``description`` and ``brand`` (strings or
null), ``category_path`` and ``tags`` (array<string> or null), ``attributes``
(map<string,string> or null); plus ``n_fields`` (fields found on the line), ``raw`` (the line,
kept for quarantine), ``source_file`` and ``line`` (the line's position in its file, so that the
last line of an item id can win). Cleaning and validation happen once, for every format alike,
in ``jobs.ingest_items.standardize_items``; an :class:`ItemSpec` tells it what it needs to know.

Formats:

- ``movielens-100k``: ``u.item``, pipe-separated, latin-1, no header: ``movie id | title |
  release date | video release date | IMDb URL | 19 genre flags`` (``ML100K_GENRES`` order).
  category_path = the flagged genres in that order; attributes ``release_date``, ``imdb_url``.
- ``movielens-csv``: ``movies.csv`` (header ``movieId,title,genres``; genres ``A|B``, ``(no genres
  listed)`` = none), and with ``items.tags_path`` a ``tags.csv`` (``userId,movieId,tag,timestamp``):
  each film's ``items.max_tags`` most frequent tags (lower-cased, trimmed; ties alphabetical).
- ``rees46``: the REES46 event CSV; one item per ``product_id``, aggregated over its clean event
  lines (``aggregate_rees46``): the most frequent non-empty ``category_code`` split on ``.``, the
  most frequent non-empty brand, attributes ``category_id`` (most frequent) and ``price`` (median,
  2 decimals). A quarantined "row" is an event line.
- ``taobao``: ``UserBehavior.csv`` (``user,item,category,behavior,ts``). The only metadata is the
  category id: category_path = ``["category <id>"]``, so the text is ``category <id>.``. For a
  language model that is an opaque token: it learns nothing from it beyond category identity
  (the same information as a category one-hot), so text / cold-start models on Taobao are a
  category baseline, not a content model.
- ``generic``: CSV (header, or positions "0", "1", ... without one) or JSON lines, mapped by
  ``items.generic.columns`` (catalogue field ``item_id``, ``title``, ``text``, ``category``,
  ``brand`` -> source column). A category string is split on ``items.generic.category_separator``
  (a JSON array is taken as the path). ``items.generic.attributes`` columns go into the attributes
  map and, as ``name: value``, into the text.

Ties between equally frequent values are broken by the smallest value (``mode(...,
deterministic=True)``), so every aggregate is reproducible.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from common import schema as S
from common.config import Config, ConfigError
from jobs.sources.base import count_fields_quoted, read_lines, split_plain, strip_space

# u.item's genre flags, in file order (u.genre)
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
ML_NO_GENRES = "(no genres listed)"
# the catalogue fields items.generic.columns may map (``text`` is the free-text description)
CATEGORY_FIELD = "category"
GENERIC_FIELDS: tuple[str, ...] = (S.ITEM_ID, S.TITLE, S.TEXT, CATEGORY_FIELD, S.BRAND)

_CORRUPT = "_corrupt_record"
_NEVER = "\u0000\u0000"  # a null marker that never occurs in real data
_TYPES = {S.CATEGORY_PATH: "array<string>", S.TAGS: "array<string>",
          S.ATTRIBUTES: "map<string,string>"}


@dataclass(frozen=True)
class ItemSpec:
    """What the item standardiser needs to know about a format."""

    name: str
    expected_fields: int  # fields of a well-formed line; -1: no check
    category_style: str = "path"  # path: "a > b" | genres: "Genres: a, b"
    text_attributes: tuple[str, ...] = ()  # attribute keys also written into the text, in order
    # event logs: clean lines -> one row of raw item fields per item_id; None: one line per item
    aggregate: Callable[[DataFrame], DataFrame] | None = None
    details: Mapping[str, int] = field(default_factory=dict)  # reader counts for the audit


# --- shared helpers -------------------------------------------------------------------------------


def numbered_lines(spark: SparkSession, path: str, encoding: str) -> DataFrame:
    """``read_lines`` plus ``line``: increasing with the line's position in its file (a file's
    lines are read in order, and ids grow with the partition they land in)."""
    return _nonblank_lines(spark, path, encoding).withColumn(S.LINE, F.col(S.LINE_POS))


def _nonblank_lines(spark: SparkSession, path: str, encoding: str) -> DataFrame:
    """``read_lines`` without its blank lines (a catalogue line with nothing on it names no
    item; ingest-items does not count them)."""
    return read_lines(spark, path, encoding).where(strip_space(F.col(S.RAW)) != "")


def split_csv(raw: Column, delimiter: str, n: int) -> Column:
    """The fields of a CSV line (at least the first ``n``), quotes respected; a doubled quote
    inside a quoted field is one quote (RFC 4180: MovieLens quotes a title holding quotes this
    way), where ``base.split_quoted`` would keep the field verbatim, quotes and all."""
    ddl = ", ".join(f"f{i} string" for i in range(n))
    opts = {"sep": delimiter, "escape": '"', "nullValue": _NEVER, "mode": "PERMISSIVE"}
    parsed = F.from_csv(raw, ddl, opts)
    # the CSV parser only where a quote needs it: a plain split is several times cheaper
    return F.when(raw.contains('"'), F.array(*[parsed[f"f{i}"] for i in range(n)])).otherwise(
        F.split(raw, re.escape(delimiter), -1)
    )


def field_at(fields: Column, i: int) -> Column:
    """0-based field ``i``, null past the end (no ANSI index error on short lines)."""
    return F.try_element_at(fields, F.lit(i + 1))


def drop_header(lines: DataFrame, first_field: Column, name: str) -> DataFrame:
    """Lines whose first field is not the header's ``name`` (case-insensitive)."""
    first = F.lower(F.trim(first_field))
    return lines.where(first.isNull() | (first != name.lower()))


def to_raw_items(lines: DataFrame, n_fields: Column, **fields: Column) -> DataFrame:
    """Project ``lines`` onto ``schema.RAW_ITEM_FIELDS`` (fields not given are null, strings are
    trimmed, blank -> null) plus ``n_fields``, ``raw``, ``source_file`` and ``line``."""
    unknown = sorted(set(fields) - set(S.RAW_ITEM_FIELDS))
    if unknown:
        raise ValueError(f"to_raw_items: not raw item fields {unknown}")
    cols = []
    for name in S.RAW_ITEM_FIELDS:
        c = fields.get(name)
        if name in _TYPES:
            c = (F.lit(None) if c is None else c).cast(_TYPES[name])
        else:
            t = F.trim(F.lit(None).cast("string") if c is None else c.cast("string"))
            c = F.when(t != "", t)
        cols.append(c.alias(name))
    return lines.select(*cols, n_fields.cast("int").alias(S.N_FIELDS), S.RAW, S.SOURCE_FILE, S.LINE)


def _attribute_map(pairs: Mapping[str, Column]) -> Column:
    if not pairs:
        return F.lit(None).cast("map<string,string>")
    return F.create_map(*[x for k, v in pairs.items() for x in (F.lit(k), v.cast("string"))])


def _as_raw_items(df: DataFrame) -> DataFrame:
    """``df``'s raw item fields, those it lacks as nulls (an aggregate's output)."""
    return df.select(
        *[F.col(c) if c in df.columns else F.lit(None).cast(_TYPES.get(c, "string")).alias(c)
          for c in S.RAW_ITEM_FIELDS]
    )


# --- MovieLens -----------------------------------------------------------------------------------


def read_movielens_100k_items(
    spark: SparkSession, path: str, cfg: Config
) -> tuple[DataFrame, ItemSpec]:
    """``u.item`` (24 fields): title, flagged genres, release date and IMDb URL."""
    lines = numbered_lines(spark, path, cfg.items.encoding or "ISO-8859-1")
    f = split_plain(F.col(S.RAW), r"\|")
    flags = [F.when(F.trim(field_at(f, 5 + i)) == "1", F.lit(g)) for i, g in enumerate(ML100K_GENRES)]
    df = to_raw_items(
        lines,
        F.size(f),
        item_id=field_at(f, 0),
        title=field_at(f, 1),
        category_path=F.filter(F.array(*flags), lambda g: g.isNotNull()),
        attributes=_attribute_map({"release_date": field_at(f, 2), "imdb_url": field_at(f, 4)}),
    )
    return df, ItemSpec("movielens-100k", expected_fields=5 + len(ML100K_GENRES),
                        category_style="genres")


def movielens_top_tags(
    spark: SparkSession, path: str, *, max_tags: int, encoding: str = "UTF-8"
) -> tuple[DataFrame, dict[str, int]]:
    """Per film of ``tags.csv`` (``userId,movieId,tag,timestamp``) its ``max_tags`` most frequent
    tags. Out: ``item_id``, ``tags`` (array, most frequent first, ties alphabetical), and counts
    ``tag_lines`` / ``tag_lines_skipped`` (wrong field count, no movieId or an empty tag)."""
    lines = _nonblank_lines(spark, path, encoding)
    f = split_csv(F.col(S.RAW), ",", 4)
    lines = drop_header(lines.withColumn("_f", f), F.col("_f")[0], "userId")
    t = lines.select(
        F.trim(field_at(F.col("_f"), 1)).alias(S.ITEM_ID),
        F.lower(F.trim(field_at(F.col("_f"), 2))).alias("_tag"),
        count_fields_quoted(F.col(S.RAW), ",").alias(S.N_FIELDS),
    )
    ok = (F.col(S.N_FIELDS) == 4) & (F.col(S.ITEM_ID) != "") & (F.col("_tag") != "")
    t = t.withColumn("_ok", F.coalesce(ok, F.lit(False)))
    stats = t.agg(F.count(F.lit(1)), F.sum(F.when(~F.col("_ok"), 1).otherwise(0))).first()
    counts = t.where("_ok").groupBy(S.ITEM_ID, "_tag").count()
    w = Window.partitionBy(S.ITEM_ID).orderBy(F.col("count").desc(), F.col("_tag"))
    top = counts.withColumn("_rank", F.row_number().over(w)).where(F.col("_rank") <= max_tags)
    tags = top.groupBy(S.ITEM_ID).agg(
        F.sort_array(F.collect_list(F.struct("_rank", "_tag"))).alias("_ranked")
    ).select(S.ITEM_ID, F.transform("_ranked", lambda x: x["_tag"]).alias(S.TAGS))
    return tags, {"tag_lines": int(stats[0] or 0), "tag_lines_skipped": int(stats[1] or 0)}


def read_movielens_csv_items(
    spark: SparkSession, path: str, cfg: Config
) -> tuple[DataFrame, ItemSpec]:
    """``movies.csv`` (3 fields, quoted titles) and, with ``items.tags_path``, its top tags."""
    ic = cfg.items
    lines = numbered_lines(spark, path, ic.encoding or "UTF-8")
    lines = lines.withColumn("_f", split_csv(F.col(S.RAW), ",", 3))
    lines = drop_header(lines, F.col("_f")[0], "movieId")
    genres = F.trim(field_at(F.col("_f"), 2))
    df = to_raw_items(
        lines,
        count_fields_quoted(F.col(S.RAW), ","),
        item_id=field_at(F.col("_f"), 0),
        title=field_at(F.col("_f"), 1),
        category_path=F.when(genres != ML_NO_GENRES, F.split(genres, r"\|")),
    )
    details: dict[str, int] = {}
    if ic.tags_path:
        tags, details = movielens_top_tags(spark, ic.tags_path, max_tags=ic.max_tags,
                                           encoding=ic.encoding or "UTF-8")
        df = df.drop(S.TAGS).join(tags, S.ITEM_ID, "left")
    return df, ItemSpec("movielens-csv", expected_fields=3, category_style="genres",
                        details=details)


# --- event logs: REES46, Taobao ------------------------------------------------------------------


def aggregate_rees46(clean: DataFrame) -> DataFrame:
    """Clean REES46 event lines -> one row per ``item_id``: the most frequent ``category_path``
    and ``brand``, ``attributes`` {``category_id``: most frequent, ``price``: median, "%.2f"}.
    In and out: raw item fields."""
    price = F.median(F.col(S.ATTRIBUTES)["price"].try_cast("double"))
    g = clean.groupBy(S.ITEM_ID).agg(
        F.mode(S.CATEGORY_PATH, True).alias(S.CATEGORY_PATH),
        F.mode(S.BRAND, True).alias(S.BRAND),
        F.mode(F.col(S.ATTRIBUTES)["category_id"], True).alias("_category_id"),
        price.alias("_price"),
    )
    attrs = _attribute_map({
        "category_id": F.col("_category_id"),
        "price": F.when(F.col("_price").isNotNull(), F.format_string("%.2f", F.col("_price"))),
    })
    return _as_raw_items(g.withColumn(S.ATTRIBUTES, attrs))


def read_rees46_items(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, ItemSpec]:
    """REES46 events (9 fields, header ``event_time,...``): per line the product's category code
    path, brand, category id and price; ``aggregate_rees46`` makes one row per product."""
    lines = numbered_lines(spark, path, cfg.items.encoding or "UTF-8")
    lines = lines.withColumn("_f", split_csv(F.col(S.RAW), ",", 9))
    lines = drop_header(lines, F.col("_f")[0], "event_time")
    f = F.col("_f")
    code = F.trim(field_at(f, 4))
    df = to_raw_items(
        lines,
        count_fields_quoted(F.col(S.RAW), ","),
        item_id=field_at(f, 2),
        category_path=F.when(code != "", F.split(code, r"\.")),
        brand=field_at(f, 5),
        attributes=_attribute_map({"category_id": field_at(f, 3), "price": field_at(f, 6)}),
    )
    return df, ItemSpec("rees46", expected_fields=9, aggregate=aggregate_rees46)


def aggregate_taobao(clean: DataFrame) -> DataFrame:
    """Clean Taobao lines -> one row per ``item_id`` with its most frequent ``category_path``."""
    return _as_raw_items(
        clean.groupBy(S.ITEM_ID).agg(F.mode(S.CATEGORY_PATH, True).alias(S.CATEGORY_PATH))
    )


def read_taobao_items(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, ItemSpec]:
    """``UserBehavior.csv`` (5 fields): the item's category id, as ``["category <id>"]``."""
    lines = numbered_lines(spark, path, cfg.items.encoding or "UTF-8")
    f = split_plain(F.col(S.RAW), ",")
    lines = drop_header(lines, f[0], "user_id")
    cat = F.trim(field_at(f, 2))
    df = to_raw_items(
        lines,
        F.size(f),
        item_id=field_at(f, 1),
        category_path=F.when(cat != "", F.array(F.concat(F.lit("category "), cat))),
    )
    return df, ItemSpec("taobao", expected_fields=5, aggregate=aggregate_taobao)


# --- generic CSV / JSON lines --------------------------------------------------------------------


def check_generic_mapping(cfg: Config, available: list[str] | None = None) -> None:
    """``items.generic.columns`` maps only catalogue fields, ``item_id`` among them; with
    ``available`` (the input's columns), every mapped and attribute column exists."""
    g = cfg.items.generic
    unknown = sorted(set(g.columns) - set(GENERIC_FIELDS))
    if unknown:
        raise ConfigError(f"items.generic.columns: unknown catalogue field(s) {unknown}; "
                          f"choose from {list(GENERIC_FIELDS)}")
    if S.ITEM_ID not in g.columns:
        raise ConfigError(f"items.generic.columns must map '{S.ITEM_ID}'")
    if available is None:
        return
    wanted = [*g.columns.values(), *g.attributes]
    missing = sorted({c for c in wanted if c not in available})
    if missing:
        raise ConfigError(
            f"items.generic.columns / items.generic.attributes name column(s) {missing} that the "
            f"input lacks; input columns: {available}"
        )


def _category(value: Column, separator: str) -> Column:
    """A category string split on ``separator``, or a JSON array taken as the path."""
    trimmed = F.trim(value)
    return F.when(trimmed.startswith("["), F.from_json(trimmed, "array<string>")).otherwise(
        F.split(trimmed, re.escape(separator), -1)
    )


def _generic_fields(cfg: Config, col: Callable[[str], Column]) -> dict[str, Column]:
    g = cfg.items.generic
    target = {S.ITEM_ID: S.ITEM_ID, S.TITLE: S.TITLE, S.TEXT: S.DESCRIPTION, S.BRAND: S.BRAND}
    out = {target[k]: col(src) for k, src in g.columns.items() if k in target}
    if CATEGORY_FIELD in g.columns:
        out[S.CATEGORY_PATH] = _category(col(g.columns[CATEGORY_FIELD]), g.category_separator)
    if g.attributes:
        out[S.ATTRIBUTES] = _attribute_map({a: col(a) for a in g.attributes})
    return out


def _header_names(line: str, delimiter: str) -> list[str]:
    cells = (next(csv.reader([line], delimiter=delimiter)) if len(delimiter) == 1
             else line.split(delimiter))
    return [c.strip().lstrip("\ufeff").strip() for c in cells]


def read_generic_items(spark: SparkSession, path: str, cfg: Config) -> tuple[DataFrame, ItemSpec]:
    """CSV or JSON lines mapped by ``items.generic``; a mapping naming columns the input lacks is
    a ConfigError naming them."""
    g = cfg.items.generic
    check_generic_mapping(cfg)
    lines = numbered_lines(spark, path, cfg.items.encoding or "UTF-8")
    if g.format == "jsonl":
        return _read_generic_jsonl(lines, cfg)
    if g.format != "csv":
        raise ConfigError(f"items.generic.format must be csv|jsonl, got {g.format!r}")
    if g.header:
        head = lines.select(S.RAW).limit(1).collect()
        if not head:
            raise FileNotFoundError(f"no lines under {path}")
        header_line = head[0][S.RAW]
        names = _header_names(header_line, g.delimiter)
        lines = lines.where(F.col(S.RAW) != header_line)
    else:
        # headerless: columns are named by 0-based position ("0", "1", ...)
        try:
            width = max(int(v) for v in [*g.columns.values(), *g.attributes]) + 1
        except ValueError:
            raise ConfigError("items.generic.header is false: map fields to column positions, "
                              "e.g. item_id: '0'") from None
        names = [str(i) for i in range(width)]
    check_generic_mapping(cfg, names)
    fields = split_csv(F.col(S.RAW), g.delimiter, len(names))
    df = to_raw_items(
        lines,
        count_fields_quoted(F.col(S.RAW), g.delimiter),
        **_generic_fields(cfg, lambda c: field_at(fields, names.index(c))),
    )
    return df, ItemSpec("generic", expected_fields=len(names), text_attributes=tuple(g.attributes))


def _read_generic_jsonl(lines: DataFrame, cfg: Config) -> tuple[DataFrame, ItemSpec]:
    g = cfg.items.generic
    keys = sorted(r[0] for r in lines.select(F.explode(F.json_object_keys(S.RAW)).alias("k"))
                  .distinct().collect())
    check_generic_mapping(cfg, keys)
    srcs = sorted({*g.columns.values(), *g.attributes})
    ddl = ", ".join(f"`{c}` string" for c in srcs) + f", {_CORRUPT} string"
    parsed = F.from_json(S.RAW, ddl, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
    lines = lines.withColumn("_j", parsed)
    ok = F.col("_j").isNotNull() & F.col(f"_j.{_CORRUPT}").isNull()
    # one JSON object per line: 1 "field" when it parses, 0 when it does not
    df = to_raw_items(
        lines,
        F.when(ok, 1).otherwise(0),
        **_generic_fields(cfg, lambda c: F.col("_j").getField(c)),
    )
    return df, ItemSpec("generic", expected_fields=1, text_attributes=tuple(g.attributes))


ITEM_READERS = {
    "movielens-100k": read_movielens_100k_items,
    "movielens-csv": read_movielens_csv_items,
    "rees46": read_rees46_items,
    "taobao": read_taobao_items,
    "generic": read_generic_items,
}


def get_item_reader(name: str):
    try:
        return ITEM_READERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown item source format '{name}'; choose one of {sorted(ITEM_READERS)}"
        ) from None
