import pytest

from rsprompt.data.splits import SPLITS, all_tiles, get_tiles, normalize_tile, split_of


def test_official_counts_and_disjointness():
    counts = {"vaihingen": (16, 17), "potsdam": (24, 14), "whu-opt-sar": (80, 20)}
    for dataset, (n_train, n_test) in counts.items():
        train, test = get_tiles(dataset, "train"), get_tiles(dataset, "test")
        assert (len(train), len(test)) == (n_train, n_test)
        assert len(set(train)) == n_train and not set(train) & set(test)
        assert len(all_tiles(dataset)) == n_train + n_test
        if "val" in SPLITS[dataset]["official"]:
            assert set(get_tiles(dataset, "val")) <= set(train)


def test_variants_and_helpers():
    assert get_tiles("vaihingen", "test", "deepnets") == (5, 21, 15, 30)
    assert "7_10" not in get_tiles("potsdam", "train", "mobanet")
    assert len(get_tiles("potsdam", "train", exclude_val=True)) == 22
    assert split_of("vaihingen", "area34") == "val"
    assert split_of("vaihingen", 1) == "train" and split_of("vaihingen", 38) == "test"
    assert split_of("whu-opt-sar", "NH50E014003") == "test"
    assert normalize_tile("vaihingen", "Area7") == 7
    with pytest.raises(ValueError, match="no 'val'"):
        get_tiles("whu-opt-sar", "val")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_tiles("isprs", "train")
    with pytest.raises(ValueError, match="variant"):
        get_tiles("potsdam", "train", "deepnets")
