"""One reader per raw log format; ``READERS[name](spark, path, cfg) -> (raw fields, SourceSpec)``."""

from __future__ import annotations

from common.config import ConfigError
from jobs.sources.generic import read_generic
from jobs.sources.lastfm import read_lastfm_hetrec
from jobs.sources.movielens import read_movielens_100k, read_movielens_csv, read_movielens_dat
from jobs.sources.rees46 import read_rees46
from jobs.sources.retailrocket import read_retailrocket
from jobs.sources.taobao import read_taobao

READERS = {
    "movielens-100k": read_movielens_100k,
    "movielens-dat": read_movielens_dat,
    "movielens-csv": read_movielens_csv,
    "taobao": read_taobao,
    "retailrocket": read_retailrocket,
    "rees46": read_rees46,
    "lastfm-hetrec": read_lastfm_hetrec,
    "generic": read_generic,
}


def get_reader(name: str):
    try:
        return READERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown source format '{name}'; choose one of {sorted(READERS)}"
        ) from None
