"""The simulated world shared by every chunk: users, items, categories, tastes and prices.

The planted structure, which a recommender should find:
  - items carry a global Zipf popularity (``generate.zipf_a``) over a random order of the items;
  - categories are dealt to ``generate.taste_clusters`` taste clusters; each cluster ranks the
    items of its categories in its own random order, again Zipf-weighted, so the items a cluster
    likes best are not the globally popular ones;
  - each user holds a taste mixture over the clusters, Dirichlet(``generate.taste_concentration``)
    (small: most users care for one or two clusters). A viewed item comes from the user's
    clusters with probability ``generate.taste_share`` and from global popularity otherwise.
A user's item distribution is then ``share * sum_c theta_uc * w_c + (1 - share) * pop``, a
rank-(clusters + 1) user x item affinity; ``affinity`` (theta of the item's cluster) also lifts the
user's click and cart rates (``generate.taste_funnel``), so the funnel follows the tastes.

Optionally (``generate.behavior_signal``, off by default) purchases depend on earlier behaviours:
an event of behaviour b on item i is followed, with probability ``behavior_signal[b]``, by a
purchase of ``partner(i)`` in the same session, right after that view's own follow-ups. The
partner map (``World.item_partner``) is fixed per seed: each category's items stand in a random
cycle and an item's partner is the next item of its cycle, a derangement within the category
(never the item itself; a category of two swaps its pair). An item alone in its category has as
partner a random other item of its taste cluster, or, when the cluster holds no other item, a
random other item of the catalogue.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from common import schema as S
from common.config import GenerateConfig

# behaviour codes are indices into S.CANONICAL_BEHAVIORS
VIEW, CLICK, CART, FAV, PURCHASE, RATING = range(6)
assert S.CANONICAL_BEHAVIORS[FAV] == S.FAV and S.CANONICAL_BEHAVIORS[RATING] == S.RATING_B


@dataclass(frozen=True)
class World:
    user_cdf: np.ndarray  # session-start probability over user index, cumulative
    user_taste: np.ndarray  # (users, clusters) taste mixture theta, rows sum to 1
    user_taste_cdf: np.ndarray  # (users, clusters) cumulative theta, last column exactly 1
    user_focus: np.ndarray  # sum_c theta_uc^2: a user's mean affinity over taste-drawn views
    item_cdf: np.ndarray  # global Zipf popularity over item index, cumulative
    cluster_items: np.ndarray  # item indices ordered by taste cluster
    cluster_cdf: np.ndarray  # per-cluster CDF of cluster_items, cluster c shifted into (c, c+1]
    item_cluster: np.ndarray  # taste cluster of each item
    item_cluster_p: np.ndarray  # probability of each item in a draw from its own cluster
    item_category: np.ndarray  # category index of each item
    item_cents: np.ndarray  # price of each item in cents
    category_cluster: np.ndarray  # taste cluster of each category
    item_partner: np.ndarray  # partner(i), the item a planted purchase buys (PARTNER_RULE)

    @property
    def clusters(self) -> int:
        return self.user_taste.shape[1]

    def cluster_favourites(self, cluster: int, n: int) -> np.ndarray:
        """The ``n`` items a draw from ``cluster`` most likely gives, best first."""
        members = np.flatnonzero(self.item_cluster == cluster)
        return members[np.argsort(-self.item_cluster_p[members], kind="stable")[:n]]

    def affinity(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """theta_u of the item's cluster: how much of the user's taste the item's cluster holds."""
        return self.user_taste[user, self.item_cluster[item]]

    def draw_items(self, rng, user: np.ndarray, share: float) -> np.ndarray:
        """One item per entry of ``user``: from the user's taste clusters with probability
        ``share``, else from global popularity."""
        n = len(user)
        cluster = (rng.random(n)[:, None] > self.user_taste_cdf[user]).sum(axis=1)
        cluster = np.minimum(cluster, self.clusters - 1)
        pos = np.searchsorted(self.cluster_cdf, cluster + rng.random(n), side="right")
        by_taste = self.cluster_items[np.minimum(pos, len(self.cluster_items) - 1)]
        by_pop = np.searchsorted(self.item_cdf, rng.random(n), side="right")
        return np.where(rng.random(n) < share, by_taste, by_pop)


PARTNER_RULE = (
    "partner(i) is the next item after i in a seeded random cycle of the items of i's category "
    "(a derangement within the category); an item alone in its category gets a random other "
    "item of its taste cluster, or a random other item when its cluster has no other"
)


def cdf(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(weights, dtype=np.float64)
    c /= c[-1]
    c[-1] = 1.0  # so a uniform draw in [0, 1) never falls past the end
    return c


def _zipf(n: int, a: float, rng) -> np.ndarray:
    """Zipf weights 1/rank^a over n entries, ranks dealt by a random permutation."""
    w = np.empty(n)
    w[rng.permutation(n)] = 1.0 / np.arange(1, n + 1) ** a
    return w


def _partners(seed: int, item_category: np.ndarray, item_cluster: np.ndarray,
              cluster_items: np.ndarray) -> np.ndarray:
    """partner(i) for every item, by PARTNER_RULE; its own stream, so the rest of the world does
    not depend on it."""
    rng = np.random.default_rng([seed, 2**40, 1])
    items = len(item_category)
    order = np.lexsort((rng.permutation(items), item_category))  # by category, shuffled within
    cats = item_category[order]
    start = np.searchsorted(cats, cats, side="left")
    per_category = np.bincount(item_category)
    size = per_category[cats]
    pos = np.arange(items)
    partner = np.empty(items, dtype=np.int64)
    partner[order] = order[start + (pos - start + 1) % size]

    lone = np.flatnonzero(per_category[item_category] == 1)
    if len(lone) and items > 1:
        u = rng.random(len(lone))
        # another member of the item's cluster: a uniform pick among the cluster's others
        in_order = item_cluster[cluster_items]
        c_start = np.searchsorted(in_order, item_cluster[lone], side="left")
        c_size = np.searchsorted(in_order, item_cluster[lone], side="right") - c_start
        at = np.empty(items, dtype=np.int64)
        at[cluster_items] = pos
        k = c_start + np.floor(u * (c_size - 1)).astype(np.int64)
        k += k >= at[lone]
        same_cluster = cluster_items[np.minimum(k, items - 1)]
        r = np.floor(u * (items - 1)).astype(np.int64)
        anywhere = r + (r >= lone)
        partner[lone] = np.where(c_size > 1, same_cluster, anywhere)
    return partner


@functools.lru_cache(maxsize=4)
def _world(
    seed: int, users: int, items: int, categories: int, zipf_a: float, clusters: int,
    concentration: float,
) -> World:
    # a stream no chunk index can reach: chunks use [seed, i]
    rng = np.random.default_rng([seed, 2**40])
    cat_w = rng.lognormal(0.0, 1.0, categories)
    item_category = rng.choice(categories, size=items, p=cat_w / cat_w.sum())

    n_clusters = min(clusters, categories)
    category_cluster = rng.permutation(categories) % n_clusters
    item_cluster = category_cluster[item_category]
    pop = _zipf(items, zipf_a, rng)

    # each cluster's own Zipf ranking of its items: one permutation, ranks counted per cluster
    cluster_items = np.argsort(item_cluster, kind="stable")
    c_sorted = item_cluster[cluster_items]
    c_sizes = np.bincount(c_sorted, minlength=n_clusters)
    c_end = np.cumsum(c_sizes)
    c_start = c_end - c_sizes
    shuffled = rng.permutation(items)
    order = np.lexsort((shuffled, c_sorted))  # within a cluster, a random order
    rank = np.empty(items, dtype=np.int64)
    rank[order] = np.arange(items) - c_start[c_sorted[order]] + 1
    csum = np.cumsum(1.0 / rank**zipf_a)
    before = np.where(c_start > 0, csum[np.maximum(c_start - 1, 0)], 0.0)
    total = csum[c_end[c_sorted] - 1] - before[c_sorted]
    within = (csum - before[c_sorted]) / total
    within[c_end[c_sizes > 0] - 1] = 1.0
    cluster_cdf = c_sorted + within
    item_cluster_p = np.empty(items)
    item_cluster_p[cluster_items] = (1.0 / rank**zipf_a) / total

    # tastes only over clusters that hold items, so every draw finds one
    non_empty = c_sizes > 0
    theta = rng.dirichlet(np.full(int(non_empty.sum()), concentration), size=users)
    user_taste = np.zeros((users, n_clusters))
    user_taste[:, non_empty] = theta
    taste_cdf = np.cumsum(user_taste, axis=1)
    taste_cdf[:, -1] = 1.0

    cat_price = rng.lognormal(3.0, 0.9, categories)
    price = cat_price[item_category] * rng.lognormal(0.0, 0.35, items)
    return World(
        user_cdf=cdf(rng.lognormal(0.0, 1.2, users)),  # heavy-tailed activity
        user_taste=user_taste,
        user_taste_cdf=taste_cdf,
        user_focus=(user_taste**2).sum(axis=1),
        item_cdf=cdf(pop),
        cluster_items=cluster_items,
        cluster_cdf=cluster_cdf,
        item_cluster=item_cluster,
        item_cluster_p=item_cluster_p,
        item_category=item_category,
        item_cents=np.maximum(np.rint(price * 100), 1).astype(np.int64),
        category_cluster=category_cluster,
        item_partner=_partners(seed, item_category, item_cluster, cluster_items),
    )


def world_of(g: GenerateConfig) -> World:
    """The world of a generate config (cached: every chunk of a run shares it)."""
    return _world(g.seed, g.users, g.items, g.categories, g.zipf_a, g.taste_clusters,
                  g.taste_concentration)


def planted_structure(g: GenerateConfig) -> dict:
    """The parameters of the planted structure and a few of its figures, for the manifest."""
    w = world_of(g)
    sizes = np.bincount(w.item_cluster, minlength=w.clusters)
    top = np.sort(w.user_taste, axis=1)[:, ::-1]
    return {
        "model": "share * sum_c theta_uc * zipf_c(item) + (1 - share) * zipf(item)",
        "zipf_a": g.zipf_a,
        "taste_clusters": w.clusters,
        "taste_concentration": g.taste_concentration,
        "taste_share": g.taste_share,
        "taste_funnel": g.taste_funnel,
        "items_per_cluster": [int(s) for s in sizes],
        "categories_per_cluster": [
            int(s) for s in np.bincount(w.category_cluster, minlength=w.clusters)
        ],
        "mean_top_cluster_share": round(float(top[:, 0].mean()), 4),
        "mean_top2_cluster_share": round(float(top[:, :2].sum(axis=1).mean()), 4),
        "fav_rate": g.fav_rate,
        "behavior_signal": dict(g.behavior_signal),
        "partner_rule": PARTNER_RULE,
    }
