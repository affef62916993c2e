"""`reclake embed`: Ray Data batch inference against the in-process sentence-transformers
reference, weights pinning, incremental re-embedding, the item_idx join."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pytest

from common import lake as L
from common import schema as S
from common.config import load_config
from common.errors import InputError
from raytrain import embed as E
from raytrain import lake_io as IO

pytestmark = pytest.mark.ray

PACKAGED = str(E.model_spec(load_config()).model_dir)
TEXTS = {
    "i-space": "space opera starship battle",
    "i-war": "galactic war film with spaceships",
    "i-romcom": "romantic comedy in Paris",
    "i-kettle": "stainless steel electric kettle, 1.7 litres, fast boil and auto shut-off",
}
INDEX = {"i-space": 0, "i-romcom": 1}  # the others have no events yet


def write_items(root: str, texts: dict[str, str]) -> None:
    """silver/items as `reclake ingest-items` leaves it (ITEMS_SCHEMA), replaced whole."""
    from deltalake import write_deltalake

    rows = [{S.ITEM_ID: i, S.ITEM_IDX: None, S.TITLE: t, S.TEXT: t, S.CATEGORY_PATH: ["x"],
             S.BRAND: None, S.ATTRIBUTES: [("k", "v")], S.SOURCE: "generic", S.BATCH_ID: "b",
             S.INGEST_TS: IO.utc_now()} for i, t in texts.items()]
    write_deltalake(f"{root}/{L.SILVER_ITEMS}",
                    pa.Table.from_pylist(rows, IO.arrow_schema(S.ITEMS_SCHEMA)), mode="overwrite")


def write_index(root: str, index: dict[str, int]) -> None:
    from deltalake import write_deltalake

    write_deltalake(f"{root}/{L.SILVER_ITEM_INDEX}", pa.table({
        S.ITEM_ID: pa.array(list(index), pa.string()),
        S.ITEM_IDX: pa.array(list(index.values()), pa.int32())}))


def read_embeddings(root: str) -> dict[tuple[str, str], dict]:
    """(model, item_id) -> row of models/text_embeddings."""
    from deltalake import DeltaTable

    dt = DeltaTable(f"{root}/{L.MODELS_TEXT_EMBEDDINGS}")
    rows = dt.to_pyarrow_table().to_pylist()
    del dt
    return {(r[S.MODEL], r[S.ITEM_ID]): r for r in rows}


def table_version(root: str) -> int:
    from deltalake import DeltaTable

    dt = DeltaTable(f"{root}/{L.MODELS_TEXT_EMBEDDINGS}")
    v = dt.version()
    del dt
    return v


def tampered_copy(dst) -> str:
    """The packaged model with every file linked except model.safetensors: a copy, bytes
    flipped."""
    os.makedirs(dst)
    for name in os.listdir(PACKAGED):
        if name != "model.safetensors":
            os.symlink(os.path.join(PACKAGED, name), os.path.join(dst, name))
    weights = bytearray(open(os.path.join(PACKAGED, "model.safetensors"), "rb").read())
    weights[-1000:-990] = bytes(b ^ 0xFF for b in weights[-1000:-990])
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(weights)
    return str(dst)


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(PACKAGED, device="cpu")


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    """Three runs on one lake: all items; one text changed and one item added (with another
    model's rows in the table); nothing changed."""
    from deltalake import write_deltalake

    root = str(tmp_path_factory.mktemp("embed") / "lake")
    write_items(root, TEXTS)
    write_index(root, INDEX)
    cfg = load_config(values={"lake": root})
    first = E.embed_run(cfg)
    snap1 = read_embeddings(root)
    other = [{**r, S.MODEL: "other-model"} for r in snap1.values()]
    write_deltalake(f"{root}/{L.MODELS_TEXT_EMBEDDINGS}",
                    pa.Table.from_pylist(other, IO.arrow_schema(S.TEXT_EMBEDDINGS_SCHEMA)),
                    mode="append")
    texts2 = {**TEXTS, "i-kettle": "cast iron kettle for a wood stove",
              "i-new": "wireless noise cancelling headphones"}
    write_items(root, texts2)
    second = E.embed_run(cfg)
    snap2 = read_embeddings(root)
    v2 = table_version(root)
    third = E.embed_run(cfg)
    return {"root": root, "texts2": texts2, "first": first, "second": second, "third": third,
            "snap1": snap1, "snap2": snap2, "v2": v2, "v3": table_version(root),
            "snap3": read_embeddings(root)}


def _vectors(snap: dict, ids) -> np.ndarray:
    return np.array([snap[(E.PACKAGED_MODEL_NAME, i)][S.VECTOR] for i in ids], dtype=np.float32)


def test_vectors_match_in_process_sentence_transformers(runs, reference):
    ids = list(TEXTS)
    got = _vectors(runs["snap1"], ids)
    want = reference.encode([TEXTS[i] for i in ids], normalize_embeddings=True)
    assert runs["first"]["embedded"] == len(TEXTS) == runs["first"]["items"]
    assert got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=1e-5)
    row = runs["snap1"][(E.PACKAGED_MODEL_NAME, "i-space")]
    assert row[S.WEIGHTS_SHA] == E.PACKAGED_SHA256
    assert row[S.TEXT_HASH] == hashlib.sha256(TEXTS["i-space"].encode()).hexdigest()
    assert runs["first"]["inputs"] == {L.SILVER_ITEMS: 0, L.SILVER_ITEM_INDEX: 0}


def test_vectors_are_semantic(runs):
    space, war, romcom = _vectors(runs["snap1"], ["i-space", "i-war", "i-romcom"])
    assert float(space @ war) > float(space @ romcom) + 0.1
    assert np.allclose(np.linalg.norm([space, war, romcom], axis=1), 1.0, atol=1e-5)


def test_item_idx_from_the_index_at_embed_time(runs):
    got = {i: r[S.ITEM_IDX] for (m, i), r in runs["snap2"].items() if m == E.PACKAGED_MODEL_NAME}
    assert got == {"i-space": 0, "i-romcom": 1, "i-war": None, "i-kettle": None, "i-new": None}


def test_rerun_embeds_only_new_or_changed_items(runs):
    s1, s2, m = runs["snap1"], runs["snap2"], E.PACKAGED_MODEL_NAME
    assert runs["second"]["embedded"] == 2 and runs["second"]["items"] == 5
    changed = {i for (model, i), r in s2.items() if model == m
               and ((model, i) not in s1 or r[S.CREATED_AT] != s1[(model, i)][S.CREATED_AT])}
    assert changed == {"i-kettle", "i-new"}
    for i in ("i-kettle", "i-new"):
        assert s2[(m, i)][S.TEXT_HASH] == E.text_hash(runs["texts2"][i])
        assert s2[(m, i)][S.CREATED_AT] > s1[(m, "i-space")][S.CREATED_AT]
    assert s2[(m, "i-kettle")][S.VECTOR] != s1[(m, "i-kettle")][S.VECTOR]
    for i in ("i-space", "i-war", "i-romcom"):  # kept bit for bit
        assert s2[(m, i)] == s1[(m, i)]
    # another model's rows, of the same items, are untouched
    others = {i: r for (model, i), r in s2.items() if model == "other-model"}
    assert others == {i: {**r, S.MODEL: "other-model"} for (_, i), r in s1.items()}


def test_rerun_without_changes_writes_nothing(runs, capsys):
    assert runs["third"]["embedded"] == 0 and runs["third"]["version"] is None
    assert runs["v3"] == runs["v2"]
    assert runs["snap3"] == runs["snap2"]


def test_tampered_weights_are_refused_before_loading(ray_local, tmp_path):
    root = str(tmp_path / "lake")
    write_items(root, TEXTS)
    bad = tampered_copy(tmp_path / "tampered")
    found = E.file_sha256(os.path.join(bad, "model.safetensors"))
    cfg = load_config(values={"lake": root, "embed.model_dir": bad,
                              "embed.weights_sha256": E.PACKAGED_SHA256})
    with pytest.raises(E.WeightsMismatch) as err:
        E.embed_run(cfg)
    msg = str(err.value)
    assert os.path.join(bad, "model.safetensors") in msg
    assert E.PACKAGED_SHA256 in msg and found in msg
    assert not os.path.exists(f"{root}/{L.MODELS_TEXT_EMBEDDINGS}")
    # the actor checks again (a worker may hold another file than the driver)
    with pytest.raises(E.WeightsMismatch):
        E.TextEmbedder(model_dir=bad, weights_sha256=E.PACKAGED_SHA256, model_name="x",
                       device="cpu", num_cpus=1, max_seq_length=128, normalize=True,
                       batch_size=8, created_at=IO.utc_now(),
                       schema=IO.arrow_schema(S.TEXT_EMBEDDINGS_SCHEMA))


def test_actor_refuses_weights_the_driver_did_not_see(ray_local, tmp_path, monkeypatch):
    """On a cluster a worker may hold another file than the driver: the actor's own check stops
    the run with the same error, and nothing is committed."""
    root = str(tmp_path / "lake")
    write_items(root, TEXTS)
    bad = tampered_copy(tmp_path / "tampered")
    monkeypatch.setattr(E, "verify_weights", lambda model_dir, expected: expected)  # driver only
    cfg = load_config(values={"lake": root, "embed.model_dir": bad,
                              "embed.weights_sha256": E.PACKAGED_SHA256})
    with pytest.raises(E.WeightsMismatch, match=f"expected {E.PACKAGED_SHA256}"):
        E.embed_run(cfg)
    assert not os.path.exists(f"{root}/{L.MODELS_TEXT_EMBEDDINGS}")


def test_cli_tampered_weights_exit_2_one_line(ray_local, tmp_path, capsys):
    from jobs.cli import main

    root = str(tmp_path / "lake")
    write_items(root, TEXTS)
    bad = tampered_copy(tmp_path / "tampered")
    rc = main(["--lake", root, "embed", "--model-dir", bad, "--weights-sha256",
               E.PACKAGED_SHA256])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("reclake embed: error: weights file ")
    assert E.PACKAGED_SHA256 in err[0]
    assert not os.path.exists(f"{root}/{L.MODELS_TEXT_EMBEDDINGS}")


def test_model_dir_must_be_a_sentence_transformers_model(tmp_path):
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="modules.json"):
        E.verify_weights(str(no_config), None)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "modules.json").write_text("[]")
    with pytest.raises(InputError, match="no weights file"):
        E.verify_weights(str(no_weights), None)
    with pytest.raises(FileNotFoundError):
        E.verify_weights(str(tmp_path / "absent"), None)
    # unpinned: the sha is computed (and recorded by the run); an older dir's pytorch_model.bin
    (no_weights / "pytorch_model.bin").write_bytes(b"weights")
    assert E.verify_weights(str(no_weights), None) == hashlib.sha256(b"weights").hexdigest()


def test_model_spec_names_and_pins(tmp_path):
    assert E.model_spec(load_config()) == E.ModelSpec(PACKAGED, "all-MiniLM-L6-v2",
                                                      E.PACKAGED_SHA256)
    d = str(tmp_path / "my-model")
    cfg = load_config(values={"embed.model_dir": d})
    assert E.model_spec(cfg) == E.ModelSpec(d, "my-model", None)
    cfg = load_config(values={"embed.model_dir": d, "embed.model_name": "mm",
                              "embed.weights_sha256": "AB"})
    assert E.model_spec(cfg) == E.ModelSpec(d, "mm", "ab")


def test_select_changed_keeps_new_and_changed_texts_sorted_by_length():
    batch = pa.table({S.ITEM_ID: ["a", "b", "c", "d"],
                      S.TEXT: ["same text", "changed text, longer", "new", "z"]})
    known = pa.table({S.ITEM_ID: ["a", "b", "d"],
                      S.TEXT_HASH: [E.text_hash("same text"), E.text_hash("old"),
                                    E.text_hash("z")]})
    index = pa.table({S.ITEM_ID: ["b", "x"], S.ITEM_IDX: pa.array([7, 9], pa.int32())})
    out = E.select_changed(batch, known=known, index=index)
    assert out.to_pylist() == [
        {S.ITEM_ID: "c", S.ITEM_IDX: None, S.TEXT: "new", S.TEXT_HASH: E.text_hash("new")},
        {S.ITEM_ID: "b", S.ITEM_IDX: 7, S.TEXT: "changed text, longer",
         S.TEXT_HASH: E.text_hash("changed text, longer")}]
    forced = E.select_changed(batch, known=known, index=index, force=True)
    assert forced.column(S.ITEM_ID).to_pylist() == ["d", "c", "a", "b"]


@pytest.mark.parametrize("embedded, form", [
    (["i0", "i9"], "AND item_id IN ("),        # a few: the embedded ones listed
    (["i0", "i1", "i2", "i3", "i9"], "AND NOT item_id IN ("),  # most: the kept ones listed
    (["i0", "i1", "i2", "i3", "i4", "i5", "i9"], None),  # all: the model's rows
    (["i9"], "AND item_id IN ("),              # only new items: matches no stored row
])
def test_replace_predicate_matches_exactly_the_embedded_rows(tmp_path, embedded, form):
    from deltalake import DeltaTable, write_deltalake

    path = str(tmp_path / "t")
    ids = [f"i{k}" for k in range(6)]
    write_deltalake(path, pa.table({S.MODEL: ["m"] * 6 + ["o"] * 6, S.ITEM_ID: ids * 2}))
    where = E.replace_predicate("m", embedded, ids)
    assert (form in where) if form else where == "model = 'm'"
    dt = DeltaTable(path)
    dt.delete(where)  # delta-rs evaluates the predicate as the replace will
    left = {(r[S.MODEL], r[S.ITEM_ID]) for r in dt.to_pyarrow_table().to_pylist()}
    del dt
    everything = {(m, i) for m in "mo" for i in ids}
    assert everything - left == {("m", i) for i in set(embedded) & set(ids)}
    # and the rows written satisfy it (delta-rs refuses a replace's rows outside its predicate)
    write_deltalake(path, pa.table({S.MODEL: ["m"] * len(embedded), S.ITEM_ID: embedded}),
                    mode="overwrite", predicate=where)


def test_which_vectors_a_text_model_reads():
    from common.config import ConfigError

    cfg = load_config(values={"lake": "/tmp/unused"})
    tuned = "all-MiniLM-L6-v2+ft:run-1"
    assert E.pick_text_model(cfg, ["m"]) == "m"  # the table's only model
    # the frozen embed.* model over a two-tower run's tuned vectors, unless these are named
    assert E.pick_text_model(cfg, [tuned, "all-MiniLM-L6-v2"]) == "all-MiniLM-L6-v2"
    named = cfg.with_(**{"text.embed_model": tuned})
    assert E.pick_text_model(named, [tuned, "all-MiniLM-L6-v2"]) == tuned
    with pytest.raises(ConfigError, match="has vectors of"):
        E.pick_text_model(named, ["all-MiniLM-L6-v2"])
    with pytest.raises(ConfigError, match="choose one with text.embed_model"):
        E.pick_text_model(cfg, ["a", "b"])
    with pytest.raises(ConfigError, match="run `reclake embed` first"):
        E.pick_text_model(cfg, [])
    own = cfg.with_(**{"embed.model_dir": "/models/e5-large/"})
    assert E.model_name(own) == "e5-large" and E.pick_text_model(own, ["a", "e5-large"]) == "e5-large"
