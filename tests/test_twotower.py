"""The two-tower model that fine-tunes the packaged MiniLM on behaviour data (plain torch, CPU):
its in-batch loss against a NumPy reference, its item tower against sentence-transformers, and a
few steps that move the encoder and lower the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import load_config
from raytrain.models.twotower import TwoTower, in_batch_loss

TEXTS = ["jazz saxophone quartet live album", "bebop trumpet jazz record", "swing big band jazz",
         "cool jazz piano trio", "hamster cage and toys", "puppy leash and collar",
         "kitten scratching post", "parrot perch and mirror", "comet and planet telescope",
         "astronaut moon landing book", "galaxy star map poster", "rocket launch model kit"]


def _numpy_in_batch(u, v, t, temp):
    logits = u @ v.T / temp
    for i in range(len(t)):
        for j in range(len(t)):
            if i != j and t[i] == t[j]:
                logits[i, j] = -np.inf
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    return float(-np.mean(np.diag(logp)))


def test_in_batch_loss_matches_numpy_with_repeated_positives():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(6, 4))
    v = rng.normal(size=(6, 4))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t = np.array([3, 5, 3, 7, 1, 5])
    got = in_batch_loss(torch.from_numpy(u), torch.from_numpy(v), torch.from_numpy(t), 0.1)
    assert float(got) == pytest.approx(_numpy_in_batch(u, v, t, 0.1), rel=1e-10)


@pytest.fixture(scope="module")
def minilm():
    from raytrain.embed import load_encoder

    model, _ = load_encoder(load_config(values={"lake": "/tmp/unused"}))
    return model


def _net(minilm, history=3):
    import copy

    st = copy.deepcopy(minilm)
    tok = st.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=16,
                       return_tensors="pt")
    encoder = st[0].auto_model
    return TwoTower(len(TEXTS), encoder=encoder, input_ids=tok["input_ids"],
                    attention_mask=tok["attention_mask"], history=history, temperature=0.05)


def test_item_tower_is_the_sentence_transformers_vector_at_the_start(minilm):
    from raytrain.embed import embed_texts

    net = _net(minilm).eval()
    want = embed_texts(minilm, TEXTS)
    np.testing.assert_allclose(net.catalogue().numpy(), want, atol=1e-5)
    # a user of the first two jazz items scores the other jazz items above the rest
    scores = net.score_users({"seq": torch.tensor([[0, 1, 2]])})[0]
    assert set(torch.topk(scores, 4).indices.tolist()) >= {2, 3}


def test_training_steps_move_the_encoder_and_lower_the_loss(minilm):
    torch.manual_seed(0)
    net = _net(minilm).train()
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    # histories inside one topic, the next item crossing to another: a taste the pretrained
    # vectors do not have (jazz listeners next buy pet items, pet owners space items, ...)
    seq = torch.tensor([[1, 2, 3], [2, 3, 4], [5, 6, 7], [6, 7, 8], [9, 10, 11], [10, 11, 12]])
    nxt = torch.tensor([5, 6, 9, 10, 1, 2])
    target = torch.cat([seq[:, 1:], nxt[:, None]], dim=1)
    batch = {"seq": seq, "target": target, "target_mask": target > 0}
    opt = torch.optim.Adam(net.parameters(), lr=5e-5)
    losses = []
    for _ in range(8):
        loss = net(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    moved = [k for k, v in net.encoder.state_dict().items()
             if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert len(moved) > 10
    # the learnt taste shows in the ranking: jazz history -> pet items now rank first
    net.eval()
    top = torch.topk(net.score_users({"seq": seq[:1]})[0], 4).indices.tolist()
    assert 4 in top or 5 in top, top


def test_training_positions_are_uniform_over_targets_and_histories_end_there():
    from raytrain.models.twotower import draw_positions, history_at

    valid = torch.tensor([[False, True, True, True], [False, False, False, True],
                          [True, False, True, False]])
    assert draw_positions(valid, None).tolist() == [3, 3, 2]  # no generator: the last target
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([draw_positions(valid, gen) for _ in range(3000)])
    for r in range(3):
        cols = valid[r].nonzero().squeeze(1).tolist()
        got = np.bincount(draws[:, r].numpy(), minlength=4) / 3000
        assert set(np.flatnonzero(got)) == set(cols)  # only positions with a target
        assert np.allclose(got[cols], 1 / len(cols), atol=0.04), got
    seq = torch.tensor([[0, 7, 8, 9], [1, 2, 3, 4], [5, 6, 7, 8]])
    pos = torch.tensor([2, 3, 0])
    want = [[0, 7, 8], [2, 3, 4], [0, 0, 5]]  # seq[r, pos-2 .. pos], 0 before the start
    assert history_at(seq, pos, 3).tolist() == want
