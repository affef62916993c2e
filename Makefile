# reclake: `make demo` and `make test` work on a fresh clone (they create .venv and install first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,ray,text
PYTEST_ARGS ?=

.PHONY: install dist demo test test-slow test-all lint bench-etl bench-als bench-influence bench-raytrain bench-embed bench-scale reproduce-ml100k reproduce-taobao reproduce-deep reproduce-tune reproduce-text test-realdata clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

# the wheel and the --py-files zip (common, jobs, raytrain) a cluster submission ships
dist: install
	$(BIN)/python deploy/dist.py

demo: install
	$(BIN)/reclake demo

# make test: everything but the tests marked slow (13.5 min on 2 cores) (end-to-end demo, sweeps, fault recovery, the
# real-data quality bars); make test-slow: those; .ci/run runs both
test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

bench-etl: install
	$(BIN)/python tests/benchmarks/bench_etl.py $(BENCH_ARGS)

bench-als: install
	$(BIN)/python tests/benchmarks/bench_als.py $(BENCH_ARGS)

bench-influence: install
	$(BIN)/python tests/benchmarks/bench_influence.py $(BENCH_ARGS)

bench-raytrain: install
	$(BIN)/python tests/benchmarks/bench_raytrain.py $(BENCH_ARGS)

bench-embed: install
	$(BIN)/python tests/benchmarks/bench_embed.py $(BENCH_ARGS)

# ingest, transform, split and ALS at 1M, 4M and 16M events in one run (~40 min on 2 cores):
# seconds per million events per stage, 16M/4M within +-20%, peak JVM and Python memory
bench-scale: install
	$(BIN)/python tests/benchmarks/bench_scale.py $(BENCH_ARGS)

# The README's real-data figures, one command each (RECLAKE_DATA_DIR: folder with the datasets).
RECLAKE_DATA_DIR ?= ../shared/data
ML = $(BIN)/reclake --config configs/movielens-100k.yaml
reproduce-ml100k: install
	$(ML) ingest --path $(RECLAKE_DATA_DIR)/movielens-100k/u.data
	$(ML) transform
	$(ML) split
	$(ML) fit --model als --run-id ml100k-als
	$(ML) fit --model popularity --run-id ml100k-popularity
	$(ML) evaluate --run-id ml100k-popularity
	$(ML) evaluate --run-id ml100k-als --compare-published
	$(BIN)/reclake --config configs/movielens-100k/als-explicit.yaml fit --run-id ml100k-als-explicit
	$(ML) evaluate --run-id ml100k-als-explicit


# The language-model figures (docs/results.md "Text models"): cold-start on MovieLens 100K
# (cold_items: text vs genre-only vs random on the held-out films; the hybrid; the profile cosine
# over MiniLM fine-tuned by the two-tower model, about 6 min on 2 cores), SASRec with
# text-initialised item embeddings vs random init on leave_last_out, NeuMF's rating >= 4 head.
MLT = $(BIN)/reclake --config configs/movielens-100k/text.yaml
reproduce-text: install
	$(ML) ingest --path $(RECLAKE_DATA_DIR)/movielens-100k/u.data
	$(ML) transform
	$(MLT) split
	$(ML) split --protocol leave_last_out
	$(MLT) ingest-items --path $(RECLAKE_DATA_DIR)/movielens-100k/u.item
	$(MLT) embed
	$(MLT) fit --run-id ml100k-cold-text
	$(MLT) fit --run-id ml100k-cold-genre --set text.features=category
	$(MLT) fit --model random --run-id ml100k-cold-random
	$(MLT) fit --model hybrid --set recommend.candidates=all --run-id ml100k-cold-hybrid
	$(MLT) fit --run-id ml100k-cold-text-profile --set text.scoring=profile
	for r in text genre random hybrid text-profile; do $(MLT) evaluate --run-id ml100k-cold-$$r || exit 1; done
	$(BIN)/reclake --config configs/movielens-100k/twotower.yaml train --run-id ml100k-cold-twotower
	$(MLT) evaluate --run-id ml100k-cold-twotower
	$(MLT) fit --run-id ml100k-cold-text-tuned --set text.scoring=profile \
	  --set text.embed_model=all-MiniLM-L6-v2+ft:ml100k-cold-twotower
	$(MLT) evaluate --run-id ml100k-cold-text-tuned
	$(BIN)/reclake --config configs/movielens-100k/sasrec.yaml train --run-id ml100k-sasrec-random
	$(BIN)/reclake --config configs/movielens-100k/sasrec-text.yaml train --run-id ml100k-sasrec-text
	$(BIN)/reclake --config configs/movielens-100k/ncf-task.yaml train --run-id ml100k-ncf-task

TB = $(BIN)/reclake --config configs/taobao.yaml
reproduce-taobao: install
	$(TB) ingest --path $(RECLAKE_DATA_DIR)/taobao-userbehavior-sample/UserBehavior.csv
	$(TB) transform
	$(TB) split
	$(TB) fit --model als --run-id taobao-als
	$(TB) fit --model popularity --run-id taobao-popularity
	for run in taobao-als taobao-popularity; do for t in all purchase; do \
	  $(TB) evaluate --run-id $$run --target $$t || exit 1; done; done
	$(TB) influence --run-id taobao-als
	$(TB) influence ablation --protocol temporal

# The deep models' real-data figures (README): NeuMF and LightGCN on ML-100K stratified, SASRec
# beside ALS and popularity on ML-100K leave_last_out, SASRec with / without behaviour embeddings on
# the Taobao sample. Each model's settings are in configs/<dataset>/<model>.yaml.
reproduce-deep: install
	$(ML) ingest --path $(RECLAKE_DATA_DIR)/movielens-100k/u.data
	$(ML) transform
	$(ML) split
	$(ML) split --protocol leave_last_out
	for m in ncf lightgcn sasrec; do \
	  $(BIN)/reclake --config configs/movielens-100k/$$m.yaml train --run-id ml100k-$$m || exit 1; done
	for m in als popularity; do \
	  $(ML) fit --model $$m --protocol leave_last_out --run-id ml100k-llo-$$m || exit 1; \
	  $(ML) evaluate --run-id ml100k-llo-$$m || exit 1; done
	$(TB) ingest --path $(RECLAKE_DATA_DIR)/taobao-userbehavior-sample/UserBehavior.csv
	$(TB) transform
	$(TB) split --protocol leave_last_out
	for on in true false; do \
	  $(BIN)/reclake --config configs/taobao/sasrec.yaml train --run-id taobao-sasrec-beh-$$on \
	    --set sasrec.behavior_embedding=$$on || exit 1; done

# Ray Tune sweeps on validation parts (stratified ML-100K: 5 % of the train share; Taobao temporal:
# 10 % of the events before the test cutoff), each best config refit on train + valid and tested
# once: ALS, LightGCN, and the Taobao behaviour weights against uniform weights.
TUNE_ML = $(BIN)/reclake --config configs/movielens-100k.yaml --lake ./lake-ml100k-tune
TUNE_TB = $(BIN)/reclake --config configs/taobao.yaml --lake ./lake-taobao-tune
reproduce-tune: install
	$(TUNE_ML) ingest --path $(RECLAKE_DATA_DIR)/movielens-100k/u.data
	$(TUNE_ML) transform
	$(TUNE_ML) split --valid-ratio 0.05 --valid-from train
	$(TUNE_ML) tune --model als --trials 24 --fresh
	$(BIN)/reclake --config configs/movielens-100k/lightgcn.yaml --lake ./lake-ml100k-tune tune \
	  --model lightgcn --trials 8 --fresh --set train.epochs=60 --set train.patience=8 \
	  --set tune.grace_period=10
	$(TUNE_TB) ingest --path $(RECLAKE_DATA_DIR)/taobao-userbehavior-sample/UserBehavior.csv
	$(TUNE_TB) transform
	$(TUNE_TB) split --set split.valid_fraction=0.1
	$(TUNE_TB) tune --model als --space configs/tune/als-weights.yaml --trials 24 --fresh

# The quality bars as tests (tests marked realdata; also part of `make test` when the data is there).
test-realdata: install
	RECLAKE_DATA_DIR=$(RECLAKE_DATA_DIR) $(BIN)/python -m pytest -m realdata $(PYTEST_ARGS)

clean:
	rm -rf lake lake-ml100k lake-taobao lake-ml100k-tune lake-taobao-tune demo-data bench-out build dist spark-warehouse .pytest_cache
