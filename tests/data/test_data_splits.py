import pytest

from lbt_tf.config import Config, DataConfig, replace
from lbt_tf.data import LBTSplits, Source, make_splits
from lbt_tf.data.splits import run_print_splits
from lbt_tf.errors import DataError

LABELED = ("teacher_train", "teacher_val", "student_train", "student_val")


def synthetic_config(**changes):
    base = dict(synthetic_train_size=40, synthetic_val_size=6, synthetic_test_size=30)
    base.update(changes)
    return DataConfig(**base)


def test_sizes_follow_the_fractions():
    splits = make_splits(synthetic_config(teacher_fraction=0.5, teacher_train_fraction=0.75,
                                          student_train_fraction=0.25), seed=0)
    assert isinstance(splits, LBTSplits) and isinstance(splits.teacher_train, Source)
    assert [len(getattr(splits, n)) for n in LABELED] == [15, 5, 5, 15]
    assert len(splits.unlabeled) == 5  # pseudo_label_ratio 1.0 * |D_s^tr|
    assert len(splits.val) == 6 and len(splits.test) == 30
    assert not splits.unlabeled.labeled and not splits.test.labeled
    assert all(getattr(splits, n).labeled for n in LABELED + ("val",))


def test_disjoint_and_covering_train():
    splits = make_splits(synthetic_config(), seed=3)
    keys = [set(getattr(splits, n).keys) for n in LABELED]
    assert sum(len(k) for k in keys) == 40
    assert set().union(*keys) == set(range(40))
    assert {s.split for s in (getattr(splits, n) for n in LABELED)} == {"train"}
    assert splits.unlabeled.split == "test"
    assert set(splits.unlabeled.keys) <= set(splits.test.keys)
    assert len(set(splits.unlabeled.keys)) == len(splits.unlabeled.keys)


def test_deterministic_per_seed():
    a, b = make_splits(synthetic_config(), 7), make_splits(synthetic_config(), 7)
    assert a == b
    c = make_splits(synthetic_config(), 8)
    assert a.teacher_train.keys != c.teacher_train.keys


def test_ratio_scales_unlabeled_and_caps_without_repeats():
    assert len(make_splits(synthetic_config(pseudo_label_ratio=2.0), 0).unlabeled) == 20
    assert len(make_splits(synthetic_config(pseudo_label_ratio=0.5), 0).unlabeled) == 5
    capped = make_splits(synthetic_config(pseudo_label_ratio=10.0), 0).unlabeled
    assert len(capped) == 30 and len(set(capped.keys)) == 30


def test_cityscapes_files_splits(cityscapes_config):
    splits = make_splits(cityscapes_config, seed=0)
    assert splits.teacher_train.kind == "files"
    train_pairs = [pair for n in LABELED for pair in getattr(splits, n).keys]
    assert len(train_pairs) == len(set(train_pairs)) == 8
    assert all("/train/" in image and label.endswith("_gtFine_labelIds.png")
               for image, label in train_pairs)
    assert all(label is None and "/test/" in image for image, label in splits.unlabeled.keys)
    assert len(splits.val) == 2


def test_unlabeled_folder(tmp_path, cityscapes_config):
    import shutil
    folder = tmp_path / "street"
    folder.mkdir()
    for i in range(3):
        shutil.copy(make_splits(cityscapes_config, 0).val.keys[0][0], folder / f"im{i}.png")
    config = replace(Config(data=cityscapes_config),
                     **{"data.unlabeled_source": "folder", "data.unlabeled_dir": str(folder),
                        "data.pseudo_label_ratio": 1.0}).data
    splits = make_splits(config, 0)
    assert len(splits.unlabeled) == 2  # |D_s^tr| of 8 train images
    assert all(str(folder) in image for image, _ in splits.unlabeled.keys)


def test_too_few_images():
    with pytest.raises(DataError, match="at least 4"):
        make_splits(synthetic_config(synthetic_train_size=3), 0)


def test_run_print_splits(capsys):
    run_print_splits(Config(data=synthetic_config()))
    out = capsys.readouterr().out
    for name in LABELED + ("unlabeled", "val", "test"):
        assert name in out
    assert "40" not in out.split("teacher_train")[1].split("\n")[0]
