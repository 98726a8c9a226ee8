from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from helpers import load_make, read_raster

from rsprompt.data.augment import JointAugmentation
from rsprompt.data.datamodules import (
    DATAMODULES,
    PotsdamDataModule,
    VaihingenDataModule,
    WHUOptSarDataModule,
)
from rsprompt.data.labels import decode_isprs_rgb, decode_whu_labels
from rsprompt.data.normalize import (
    DSMNormalizer,
    Normalization,
    OpticalNormalizer,
    SARNormalizer,
)
from rsprompt.data.splits import get_tiles

#: The benchmark datamodules (official layouts); RasterDataModule is tested in test_custom_data.
BENCHMARKS = {k: v for k, v in DATAMODULES.items() if k != "custom"}
#: Files as distributed carry no georeferencing; rasterio warns on every open.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
#: Identity normalisation (global mode with mean 0, std 1 is the identity for any aux raster):
#: batches hold the raw file values.
IDENTITY = Normalization(
    OpticalNormalizer(mean=(0.0,), std=(1.0,), scale=1.0), DSMNormalizer(mode="global")
)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for name in BENCHMARKS:
        root = tmp_path_factory.mktemp(name)
        load_make(name).make(root)
        out[name] = root
    return out


def locate(ds, sl):
    for tile, grids in zip(ds.tiles, ds.grids):
        t = grids.image.transform
        col, row = round((sl[0].start - t.c) / t.a), round((sl[1].stop - t.f) / t.e)
        if 0 <= col < grids.image.width and 0 <= row < grids.image.height:
            return tile, row, col
    raise AssertionError(sl)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_training_batches_align_with_the_files(roots, name):
    size = 32
    dm = DATAMODULES[name](
        roots[name], patch_size=size, batch_size=4, length=4, normalization=IDENTITY, augment=False
    )
    dm.setup("fit")
    ds = dm.dataset("train")
    dm.train_sampler.set_epoch(0)
    slices = list(dm.train_sampler)
    dm.train_sampler.set_epoch(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[0] == 4 and batch["mask"].dtype == torch.int64
    assert batch["aux"].shape == (4, 1, size, size) and batch["aux_valid"].shape == (
        4,
        1,
        size,
        size,
    )
    for i, sl in enumerate(slices):
        tile, row, col = locate(ds, sl)
        win = rasterio.windows.Window(col, row, size, size)
        np.testing.assert_array_equal(batch["image"][i].numpy(), read_raster(tile.image, win))
        aux = read_raster(tile.aux, win).astype(np.float32)
        if name == "whu-opt-sar":
            labels = decode_whu_labels(read_raster(tile.label, win)[0])
        else:
            labels = decode_isprs_rgb(read_raster(tile.label, win))
        np.testing.assert_array_equal(batch["aux"][i].numpy(), aux)
        np.testing.assert_array_equal(batch["mask"][i].numpy(), labels)


def test_per_epoch_seeding_is_reproducible(roots):
    dm = VaihingenDataModule(roots["vaihingen"], patch_size=32, length=5, batch_size=1, seed=7)
    dm.setup("fit")
    s = dm.train_sampler
    s.set_epoch(3)
    a = [(x.start, y.start) for x, y in s]
    s.set_epoch(3)
    b = [(x.start, y.start) for x, y in s]
    s.set_epoch(4)
    c = [(x.start, y.start) for x, y in s]
    assert a == b and a != c and len(a) == 5
    assert s.epoch == 5  # advances by itself outside Lightning
    it = iter(s)
    next(it)  # an epoch not read to the end still counts
    assert s.epoch == 6
    other = VaihingenDataModule(roots["vaihingen"], patch_size=32, length=5, batch_size=1, seed=8)
    other.setup("fit")
    other.train_sampler.set_epoch(3)
    assert [(x.start, y.start) for x, y in other.train_sampler] != a


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_validation_is_held_out_of_training_and_not_the_test_set(roots, name):
    dm = DATAMODULES[name](roots[name], patch_size=32)
    dm.setup("fit")
    dm.setup("test")
    train = set(dm.dataset("train").tile_names())
    val = set(dm.dataset("val").tile_names())
    test = set(dm.dataset("test").tile_names())
    assert val and train and test
    assert not (val & train) and not (val & test) and not (train & test)
    official_train = {str(t) for t in get_tiles(name, "train")}
    assert val <= official_train
    batches = list(dm.val_dataloader())
    windows = sum(b["image"].shape[0] for b in batches)
    assert windows == len(dm.val_dataloader().sampler) > 0
    assert all(b["image"].shape[-2:] == (32, 32) for b in batches)


def test_whole_test_tiles_for_sliding_window_evaluation(roots):
    dm = PotsdamDataModule(roots["potsdam"], patch_size=32)
    tiles = list(dm.tiles("test"))
    assert [t["name"] for t in tiles] == ["2_13"]
    t = tiles[0]
    assert t["image"].shape == (3, 96, 96) and t["aux"].shape == (1, 96, 96)
    assert t["mask"].shape == (96, 96) and t["aux_valid"].all()
    assert t["crs"].to_epsg() == 32633 and t["transform"].a == pytest.approx(0.05)
    # default DSM normalisation: min-max over the whole tile
    assert t["aux"].min() == 0.0 and t["aux"].max() == pytest.approx(1.0)
    assert np.isfinite(t["image"]).all()
    eroded = next(dm.tiles("test", labels="eroded"))
    assert (eroded["mask"] == 255).sum() > (t["mask"] == 255).sum()


def test_training_augmentation_runs_after_transfer_only_when_training(roots):
    dm = VaihingenDataModule(
        roots["vaihingen"],
        patch_size=32,
        length=2,
        batch_size=2,
        augment=JointAugmentation(hflip=1.0, vflip=0.0, rotate90=False),
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm._trainer = SimpleNamespace(training=True)
    out = dm.on_after_batch_transfer(dict(batch), 0)
    for key in ("image", "aux", "aux_valid", "mask"):
        assert torch.equal(out[key], batch[key].flip(-1))
    dm._trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch


def test_defaults_and_state(roots):
    dm = WHUOptSarDataModule(roots["whu-opt-sar"], patch_size=32, length=2, batch_size=2)
    assert dm.normalization.optical.bands == (0, 1, 2)
    assert isinstance(dm.normalization.aux, SARNormalizer)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape[1] == 3
    assert dm.num_classes == 7 and dm.dataset_name == "whu-opt-sar" and dm.aux_kind == "sar"
    assert WHUOptSarDataModule(roots["whu-opt-sar"], keep_background=True).num_classes == 8
    assert VaihingenDataModule(roots["vaihingen"]).class_table.names[0] == "impervious surfaces"
    state = dm.state_dict()
    other = WHUOptSarDataModule(roots["whu-opt-sar"], normalization=Normalization())
    other.load_state_dict(state)
    assert other.normalization == dm.normalization
    as_dict = WHUOptSarDataModule(roots["whu-opt-sar"], normalization=state["normalization"])
    assert as_dict.normalization == dm.normalization


def test_patch_larger_than_every_tile_fails_loudly(roots):
    dm = VaihingenDataModule(roots["vaihingen"], patch_size=128)
    with pytest.raises(ValueError, match="no 128×128 px patch can be sampled from the train tiles"):
        dm.setup("fit")
    with pytest.raises(ValueError, match=r"smaller patch size \(--data.patch_size, at most (\d+)"):
        dm.setup("fit")


def test_epoch_shorter_than_a_batch_fails_loudly(roots):
    dm = VaihingenDataModule(roots["vaihingen"], patch_size=32, length=4, batch_size=8)
    with pytest.raises(ValueError, match="less than batch_size=8"):
        dm.setup("fit")


def test_worker_processes_read_the_same_batches(roots):
    def first_batch(workers):
        dm = PotsdamDataModule(
            roots["potsdam"],
            patch_size=32,
            length=4,
            batch_size=4,
            num_workers=workers,
            augment=False,
        )
        dm.setup("fit")
        dm.train_sampler.set_epoch(2)
        return next(iter(dm.train_dataloader()))

    a, b = first_batch(0), first_batch(1)
    for key in ("image", "aux", "aux_valid", "mask"):
        assert torch.equal(a[key], b[key])


def test_lightning_trainer_drives_the_datamodule(roots):
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(5, 6, 1)
            self.seen = {"train": 0, "val": 0}

        def training_step(self, batch, _):
            x = torch.cat([batch["image"], batch["aux"], batch["aux_valid"]], 1)
            self.seen["train"] += 1
            return torch.nn.functional.cross_entropy(self.head(x), batch["mask"], ignore_index=255)

        def validation_step(self, batch, _):
            self.seen["val"] += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = VaihingenDataModule(roots["vaihingen"], patch_size=32, batch_size=2, length=4)
    model = Tiny()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=2,
    )
    trainer.fit(model, datamodule=dm)
    assert model.seen["train"] == 4 and model.seen["val"] >= 2
    assert dm.train_sampler.epoch == 2  # epochs 0 and 1 were drawn


@pytest.mark.parametrize("restore_before_setup", [True, False])
def test_restored_state_continues_the_sampler_epochs(roots, restore_before_setup):
    """A resumed run draws the next epoch's patches, not epoch 0's again (also under DDP,
    where Lightning's set_epoch reaches only its DistributedSamplerWrapper)."""
    kw = {"patch_size": 32, "length": 4, "batch_size": 2, "seed": 7}
    dm = VaihingenDataModule(roots["vaihingen"], **kw)
    dm.setup("fit")
    first = list(dm.train_sampler)
    state = dm.state_dict()
    assert state["epoch"] == 1
    expected = list(dm.train_sampler)  # epoch 1
    resumed = VaihingenDataModule(roots["vaihingen"], **kw)
    if restore_before_setup:
        resumed.load_state_dict(state)
        resumed.setup("fit")
    else:
        resumed.setup("fit")
        resumed.load_state_dict(state)
    again = list(resumed.train_sampler)
    assert again == expected and again != first
