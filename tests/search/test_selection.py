"""--arch_selection=perturbation (search/selection.py): each alpha row's op is the one whose
one-hot row gives the lowest val loss; skip only when allowed; beta/gamma untouched; and the
search's end derives from that choice and writes every row's losses (stand-in supernet)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.models.fasterseg.space import OP_NAMES
from lbt_tf.search import runner, selection
from tests.search.test_runner import tiny_search_config

# Per alpha row, the val loss each op gives alone: row 0 is best with conv_2x, row 1 with skip
# (then conv), row 2 with conv_downup.
COSTS = np.array([[5.0, 4.0, 3.0, 1.0, 2.0],
                  [0.5, 1.0, 3.0, 2.0, 4.0],
                  [4.0, 3.0, 1.0, 2.0, 5.0]])


def _loss(batch, arch):
    """sum over rows of softmax(alpha row) . costs, plus what beta adds (independent of alpha)."""
    del batch
    return (tf.reduce_sum(tf.nn.softmax(arch[0], axis=-1) * COSTS)
            + tf.reduce_sum(tf.square(arch[1])))


@pytest.mark.parametrize("allow_skip,expected", [(False, ["conv_2x", "conv", "conv_downup"]),
                                                 (True, ["conv_2x", "skip", "conv_downup"])])
def test_each_row_gets_the_op_with_the_lowest_one_hot_loss(allow_skip, expected):
    alpha = tf.constant(np.random.default_rng(0).normal(0, 0.1, (3, 5)), tf.float32)
    beta = tf.constant([[0.3, -0.2], [0.1, 0.4]])
    chosen, rows = selection.perturbation_selection(_loss, [alpha, beta], ["alpha_0", "beta_1"],
                                                    batches=[None, None],
                                                    allow_skip=allow_skip)
    assert [r["chosen"] for r in rows] == expected
    picks = [OP_NAMES.index(name) for name in expected]
    np.testing.assert_allclose(chosen["alpha_0"],
                               np.eye(len(OP_NAMES))[picks] * selection.ONE_HOT_LOGIT)
    np.testing.assert_array_equal(chosen["beta_1"], beta.numpy())   # paths as searched
    # each reported loss is the loss with that row one-hot, the other rows as searched
    others = tf.reduce_sum(tf.nn.softmax(alpha[1:], axis=-1) * COSTS[1:]) + tf.reduce_sum(beta ** 2)
    assert rows[0]["losses"]["conv"] == pytest.approx(float(others) + COSTS[0, 1], rel=1e-5)
    assert rows[1]["argmax"] == OP_NAMES[int(np.argmax(alpha.numpy()[1]))]


def test_no_batch_is_an_error():
    with pytest.raises(ValueError, match="at least one val batch"):
        selection.perturbation_selection(_loss, [tf.zeros((1, 5))], ["alpha_0"], [])


def test_the_search_derives_from_the_selection(tmp_path):
    """The real (tiny) supernet, fasterseg mode: selection.json holds every alpha row's one-hot
    losses and arch.json the network derived from the chosen ops."""
    config = tiny_search_config(tmp_path, "fasterseg", **{"search.arch_selection": "perturbation",
                                                           "search.selection_batches": 1,
                                                           "search.warmup_epochs": 0,
                                                           "search.epochs": 1})
    result = runner.run_search(config)
    report = json.load(open(tmp_path / "selection.json"))
    layers = config.teacher.layers
    assert report["batches"] == 1
    assert [r["arch"] for r in report["rows"]] == (["alpha_0"] * layers + ["alpha_1"] * (layers - 1)
                                                   + ["alpha_2"] * (layers - 2))
    for row in report["rows"]:
        losses = row["losses"]
        assert row["chosen"] == min((op for op in losses if op != "skip"), key=losses.get)
    derived = json.load(open(result.arch_path))["arch_params"]
    for row in report["rows"]:
        assert OP_NAMES[int(np.argmax(derived[row["arch"]][row["row"]]))] == row["chosen"]
