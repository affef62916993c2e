"""The deep models as plain torch modules (no Ray, no Spark): shapes, padding, causality, the
behaviour embedding switch, LightGCN against a dense NumPy reference, gradients for DDP, and each
model learning a tiny planted pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import ConfigError, load_config
from raytrain.models import LightGCN, build, normalized_adjacency
from tests.reference.lightgcn import dense_normalized_adjacency, dense_propagate


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors this small gain nothing from intra-op threads, and on a busy machine two spinning
    OpenMP threads make the training tests many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw):
    vals = {"sasrec.dim": 16, "sasrec.heads": 2, "sasrec.blocks": 2, "sasrec.max_len": 12,
            "sasrec.dropout": 0.0, "ncf.dim_gmf": 8, "ncf.dim_mlp": 8, "ncf.layers": [16, 8],
            "lightgcn.dim": 8, "lightgcn.layers": 2}
    vals.update(kw)
    return load_config(values=vals)


def _sasrec(**kw):
    torch.manual_seed(0)
    return build("sasrec", n_users=0, n_items=30, cfg=_cfg(**kw), n_behaviors=6).eval()


SEQ = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 7, 8]])
BEH = torch.tensor([[0, 0, 1, 2, 1, 3], [0, 0, 0, 0, 1, 5]])


def test_shapes():
    m = _sasrec()
    assert m.hidden(SEQ, BEH).shape == (2, 6, 16)
    assert m.score_users({"seq": SEQ, "beh": BEH}).shape == (2, 30)
    assert m.embeddings()["item"].shape == (30, 16) and set(m.embeddings()) == {"item"}
    cfg = _cfg()
    pairs = (np.array([0, 1, 2]), np.array([0, 3, 4]))
    for name in ("ncf", "lightgcn"):
        net = build(name, n_users=4, n_items=6, cfg=cfg, graph=pairs)
        assert net.score_users({"user_idx": torch.tensor([0, 3, 1])}).shape == (3, 6)
        e = net.embeddings()
        assert e["user"].shape[0] == 4 and e["item"].shape[0] == 6
        loss = net({"user_idx": torch.tensor([0, 1]), "item_idx": torch.tensor([0, 3]),
                    "neg_items": torch.tensor([[1, 2], [4, 5]])})
        assert loss.shape == () and torch.isfinite(loss)
    with pytest.raises(ConfigError, match="unknown deep model"):
        build("nope", n_users=1, n_items=1, cfg=cfg)


def test_sasrec_padding_changes_nothing():
    m = _sasrec()
    h = m.hidden(SEQ, BEH)
    more = m.hidden(torch.cat([torch.zeros(2, 4, dtype=torch.long), SEQ], 1),
                    torch.cat([torch.zeros(2, 4, dtype=torch.long), BEH], 1))
    torch.testing.assert_close(more[:, 4:], h, atol=1e-5, rtol=1e-5)
    beh = BEH.clone()
    beh[1, :4] = 3  # behaviour ids under padded items
    torch.testing.assert_close(m.hidden(SEQ, beh), h, atol=1e-6, rtol=1e-6)
    assert (h[SEQ == 0] == 0).all()
    assert not torch.isnan(h).any()


def test_sasrec_is_causal():
    m = _sasrec()
    h = m.hidden(SEQ, BEH)
    for t in range(2, 5):
        seq, beh = SEQ.clone(), BEH.clone()
        seq[0, t + 1], beh[0, t + 1] = 29, 4
        h2 = m.hidden(seq, beh)
        torch.testing.assert_close(h2[0, :t + 1], h[0, :t + 1], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(h2[0, t + 1], h[0, t + 1])


def test_behavior_embedding_switch():
    on, off = _sasrec(), _sasrec(**{"sasrec.behavior_embedding": False})
    assert any("beh" in n for n, _ in on.named_parameters())
    assert not any("beh" in n for n, _ in off.named_parameters())
    other = BEH.clone()
    other[0, 2:] = 5
    torch.testing.assert_close(off.hidden(SEQ, other), off.hidden(SEQ, BEH))
    assert not torch.allclose(on.hidden(SEQ, other), on.hidden(SEQ, BEH))


def test_every_parameter_gets_a_gradient():
    cfg = _cfg()
    pairs = (np.array([0, 1, 2]), np.array([0, 3, 4]))
    batch = {"user_idx": torch.tensor([0, 1]), "item_idx": torch.tensor([0, 3]),
             "neg_items": torch.tensor([[1, 2], [4, 5]])}
    for name in ("ncf", "lightgcn"):
        net = build(name, n_users=4, n_items=6, cfg=cfg, graph=pairs)
        net(batch).backward()
        assert [n for n, p in net.named_parameters() if p.grad is None] == []
    for loss in ("full", "sampled"):
        m = _sasrec(**{"sasrec.loss": loss, "sasrec.negatives": 5}).train()
        target = torch.tensor([[0, 4, 5, 6, 7, 0], [0, 0, 0, 7, 8, 0]])
        m({"seq": SEQ, "beh": BEH, "target": target}, generator=torch.Generator().manual_seed(1)
          ).backward()
        assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_lightgcn_propagation_equals_dense_reference():
    # user 3 isolated, (0, 1) listed twice
    pairs = [(0, 0), (0, 1), (0, 1), (1, 1), (1, 2), (2, 2), (2, 4), (1, 4)]
    u, i = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    adj = normalized_adjacency(u, i, 4, 5).to_dense().numpy()
    ref = dense_normalized_adjacency(pairs, 4, 5)
    np.testing.assert_allclose(adj, ref, rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    net = LightGCN(4, 5, graph=(u, i), dim=3, layers=3)
    users, items = net.propagate()
    want = dense_propagate(net.ego.weight.detach().double().numpy(), ref, 3)
    np.testing.assert_allclose(np.vstack([users.detach(), items.detach()]), want, rtol=1e-5,
                               atol=1e-6)
    assert not np.isnan(want).any() and np.allclose(want[3], net.ego.weight[3].detach() / 4)


def _two_groups():
    """20 users, 20 items: user u likes items of parity u % 2; one liked item held out."""
    users, items, held = [], [], {}
    for u in range(20):
        own = [i for i in range(20) if i % 2 == u % 2]
        held[u] = own[u % 10]
        for i in own:
            if i != held[u]:
                users.append(u)
                items.append(i)
    return np.array(users), np.array(items), held


@pytest.mark.parametrize("name", ["ncf", "lightgcn"])
def test_pair_models_learn_planted_tastes(name):
    torch.manual_seed(0)
    users, items, held = _two_groups()
    net = build(name, n_users=20, n_items=20, cfg=_cfg(), graph=(users, items))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    rng = np.random.default_rng(0)
    seen = {u: set(items[users == u].tolist()) for u in range(20)}
    losses = []
    for _ in range(300):
        idx = rng.integers(0, len(users), 64)
        # negatives from the other taste group (the held-out item is never a negative)
        neg = torch.as_tensor(2 * rng.integers(0, 10, (64, 2)) + 1 - users[idx, None] % 2)
        loss = net({"user_idx": torch.as_tensor(users[idx]),
                    "item_idx": torch.as_tensor(items[idx]), "neg_items": neg})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    net.eval()
    with torch.no_grad():
        scores = net.score_users({"user_idx": torch.arange(20)}).numpy()
    for u in range(20):
        s = scores[u].copy()
        s[list(seen[u])] = -np.inf
        assert s.argmax() == held[u], (u, s.argmax(), held[u])


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_sasrec_learns_a_cycle(loss):
    """Items follow the cycle 0 -> 1 -> ... -> 9 -> 0: the next item of the cycle ranks first."""
    torch.manual_seed(0)
    m = build("sasrec", n_users=0, n_items=10, n_behaviors=6,
              cfg=_cfg(**{"sasrec.loss": loss, "sasrec.negatives": 4, "sasrec.max_len": 8,
                          "sasrec.blocks": 1}))
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(250):
        starts = rng.integers(0, 10, 32)
        toks = (starts[:, None] + np.arange(9)[None, :]) % 10 + 1
        seq, tgt = torch.as_tensor(toks[:, :-1]), torch.as_tensor(toks[:, 1:])
        out = m({"seq": seq, "beh": torch.ones_like(seq), "target": tgt}, generator=g)
        opt.zero_grad()
        out.backward()
        opt.step()
        losses.append(float(out.detach()))
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    m.eval()
    toks = (np.arange(10)[:, None] + np.arange(8)[None, :]) % 10 + 1
    with torch.no_grad():
        top = m.score_users({"seq": torch.as_tensor(toks), "beh": torch.ones(10, 8,
                                                                          dtype=torch.long)})
    assert (top.argmax(1).numpy() == (np.arange(10) + 8) % 10).all()


def test_sasrec_target_mask_is_honoured():
    """Purchases follow the cycle +1, views follow +5: trained on purchase targets only, the
    model predicts the purchase rule, whatever the views teach."""
    torch.manual_seed(0)
    m = build("sasrec", n_users=0, n_items=10, n_behaviors=6,
              cfg=_cfg(**{"sasrec.max_len": 2, "sasrec.blocks": 1}))
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 10, 64)
        purchase = rng.random(64) < 0.5
        nxt = np.where(purchase, (a + 1) % 10, (a + 5) % 10)
        seq = torch.as_tensor(np.stack([np.zeros(64, int), a + 1], 1))
        tgt = torch.as_tensor(np.stack([np.zeros(64, int), nxt + 1], 1))
        mask = torch.as_tensor(np.stack([np.zeros(64, bool), purchase], 1))
        out = m({"seq": seq, "beh": torch.ones_like(seq), "target": tgt, "target_mask": mask})
        opt.zero_grad()
        out.backward()
        opt.step()
    m.eval()
    seq = torch.as_tensor(np.stack([np.zeros(10, int), np.arange(10) + 1], 1))
    with torch.no_grad():
        top = m.score_users({"seq": seq, "beh": torch.ones_like(seq)}).argmax(1).numpy()
    assert (top == (np.arange(10) + 1) % 10).all(), top


def test_ncf_score_users_equals_forward_on_every_pair():
    users = torch.tensor([3, 0, 2])
    for layers in ([16, 8], []):
        torch.manual_seed(0)
        net = build("ncf", n_users=4, n_items=7, cfg=_cfg(**{"ncf.layers": layers})).eval()
        net.score_pairs = 5  # 1 item per chunk for 3 users: the chunk seams are exercised
        with torch.no_grad():
            got = net.score_users({"user_idx": users})
            want = net(users[:, None].expand(-1, 7).reshape(-1),
                       torch.arange(7).repeat(3)).view(3, 7)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def _batches():
    pairs = {"user_idx": torch.tensor([0, 1]), "item_idx": torch.tensor([0, 3]),
             "neg_items": torch.tensor([[1, 2], [4, 5]])}
    seq = {"seq": SEQ, "beh": BEH, "target": torch.tensor([[0, 4, 5, 6, 7, 0],
                                                           [0, 0, 0, 7, 8, 0]])}
    return {"ncf": pairs, "lightgcn": pairs, "sasrec": seq}


@pytest.mark.parametrize("name", ["ncf", "sasrec", "lightgcn"])
def test_models_run_under_bf16_autocast(name):
    torch.manual_seed(0)
    net = build(name, n_users=4, n_items=30, cfg=_cfg(**{"sasrec.negatives": 5}),
                n_behaviors=6, graph=(np.array([0, 1, 2]), np.array([0, 3, 4])))
    batch = _batches()[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.shape == ()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = net.score_users(batch)
    assert scores.dtype == torch.float32 and scores.shape == (2, 30)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("beh_on", [True, False])
def test_sasrec_batch_without_targets_is_zero_and_connected(beh_on):
    m = _sasrec(**{"sasrec.behavior_embedding": beh_on}).train()
    loss = m({"seq": SEQ, "beh": BEH, "target": torch.zeros_like(SEQ)})
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_sasrec_sampled_negative_equal_to_the_positive_is_masked():
    # one item: every negative is the positive, so the softmax holds the positive alone (loss 0;
    # unmasked it would be log(1 + negatives))
    torch.manual_seed(0)
    m = build("sasrec", n_users=0, n_items=1, n_behaviors=6,
              cfg=_cfg(**{"sasrec.loss": "sampled", "sasrec.negatives": 7})).eval()
    seq = torch.tensor([[0, 1, 1]])
    loss = m({"seq": seq, "beh": torch.ones_like(seq), "target": torch.tensor([[0, 1, 1]])},
             generator=torch.Generator().manual_seed(0))
    assert abs(float(loss.detach())) < 1e-6


def test_sasrec_rejects_sequences_longer_than_max_len():
    m = _sasrec()
    with pytest.raises(ValueError, match="max_len"):
        m.hidden(torch.ones(1, 13, dtype=torch.long), torch.ones(1, 13, dtype=torch.long))


def test_ddp_every_parameter_reduced(tmp_path):
    """Under DistributedDataParallel (gloo, one rank, find_unused_parameters off, buffers
    broadcast), three loss calls: an unused parameter, or LightGCN's sparse graph broadcast,
    would raise."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        batches = _batches()
        for name in ("ncf", "sasrec", "lightgcn"):
            torch.manual_seed(0)
            net = build(name, n_users=4, n_items=30, cfg=_cfg(**{"sasrec.loss": "sampled",
                                                                 "sasrec.negatives": 5}),
                        n_behaviors=6, graph=(np.array([0, 1, 2]), np.array([0, 3, 4])))
            model = DDP(net, broadcast_buffers=True)
            before = [p.detach().clone() for p in net.parameters()]
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for step in range(3):
                opt.zero_grad()
                model(batches[name], generator=torch.Generator().manual_seed(step)).backward()
                opt.step()
            moved = [not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True)]
            assert all(moved), name
    finally:
        dist.destroy_process_group()


def _item_text(n: int, d: int = 12, groups: int = 3) -> np.ndarray:
    """Unit text vectors of ``n`` items in ``groups`` tight clusters; item 5 has none."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(groups, d))
    v = centres[np.arange(n) % groups] + 0.05 * rng.normal(size=(n, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[5] = 0.0
    return v.astype(np.float32)


@pytest.mark.parametrize("name", ["sasrec", "ncf"])
def test_text_initialised_item_embeddings(name):
    text = _item_text(30)
    torch.manual_seed(0)
    net = build(name, n_users=4, n_items=30, cfg=_cfg(), n_behaviors=6, item_text=text)
    mods = [net.item] if name == "sasrec" else [net.item_gmf, net.item_mlp]
    has = np.linalg.norm(text, axis=1) > 0
    for mod in mods:
        w = mod.weight.detach().numpy()[1:] if name == "sasrec" else mod.weight.detach().numpy()
        assert w.shape[0] == 30
        u = w / np.linalg.norm(w, axis=1, keepdims=True)
        sim = u @ u.T
        same = np.arange(30)[:, None] % 3 == np.arange(30)[None, :] % 3
        both = has[:, None] & has[None, :] & ~np.eye(30, dtype=bool)
        # at step 0, items that read alike sit together: same-cluster rows are near-parallel
        assert sim[same & both].mean() > 0.9
        assert sim[same & both].mean() > sim[~same & both].mean() + 0.5
        # rows with text are exactly W t (the residual starts at 0)
        np.testing.assert_allclose(w[has], text[has] @ mod.proj.weight.detach().numpy().T,
                                   rtol=1e-5, atol=1e-6)
    if name == "sasrec":
        assert torch.count_nonzero(net.item.weight[0]) == 0  # padding stays zero
        net.train()
        target = torch.tensor([[0, 4, 5, 6, 7, 0], [0, 0, 0, 7, 8, 0]])
        net({"seq": SEQ, "beh": BEH, "target": target}).backward()
    else:
        batch = {"user_idx": torch.tensor([0, 1]), "item_idx": torch.tensor([0, 3]),
                 "neg_items": torch.tensor([[1, 2], [4, 5]])}
        net(batch).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    assert any("proj" in n for n, _ in net.named_parameters())
    # a state dict round-trips into a model built the same way (what the scorer does)
    again = build(name, n_users=4, n_items=30, cfg=_cfg(), n_behaviors=6, item_text=text)
    again.load_state_dict(net.state_dict())


def test_load_item_text_places_vectors_by_item_idx(tmp_path):
    import pyarrow as pa
    from deltalake import write_deltalake

    from common import lake as L
    from common.lake import Lake
    from raytrain import data as D

    lake = Lake(str(tmp_path))
    write_deltalake(lake.path(L.SILVER_ITEM_INDEX), pa.table(
        {"item_id": ["a", "b", "c"], "item_idx": pa.array([2, 0, 1], pa.int32())}))
    write_deltalake(lake.path(L.MODELS_TEXT_EMBEDDINGS), pa.table(
        {"item_id": ["c", "a", "zzz"], "model": ["m", "m", "m"],
         "vector": [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]}))
    versions = {L.SILVER_ITEM_INDEX: 0, L.MODELS_TEXT_EMBEDDINGS: 0}
    out = D.load_item_text(lake, load_config(), versions, 4)
    # a -> 2, c -> 1; b has no vector, zzz has no index, item 3 is beyond both
    np.testing.assert_array_equal(out, [[0, 0], [1, 0], [0, 1], [0, 0]])
