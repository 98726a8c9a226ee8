import pytest
import torch

from rsprompt.data.augment import JointAugmentation
from rsprompt.data.labels import IGNORE_INDEX


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(6, 3, 24, 24, generator=g)
    aux = image[:, :1] * 3 + 1  # aux is a function of the image: alignment is checkable
    mask = (image[:, 0] * 6).long().clamp(max=5)
    mask[:, 0, 0] = IGNORE_INDEX
    return {"image": image, "aux": aux, "aux_valid": torch.ones(6, 1, 24, 24), "mask": mask}


def test_forced_flip_moves_all_modalities():
    batch = _batch()
    out = JointAugmentation(hflip=1.0, vflip=0.0, rotate90=False)(batch)
    for key in ("image", "aux", "aux_valid"):
        torch.testing.assert_close(out[key], batch[key].flip(-1))
    assert torch.equal(out["mask"], batch["mask"].flip(-1))
    assert out["mask"].dtype == torch.int64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_augmentation_keeps_image_aux_mask_aligned(seed):
    torch.manual_seed(seed)
    batch = _batch(seed)
    out = JointAugmentation(hflip=0.5, vflip=0.5, rotate90=True)(batch)
    torch.testing.assert_close(out["aux"], out["image"][:, :1] * 3 + 1)
    ok = out["mask"] != IGNORE_INDEX
    expected = (out["image"][:, 0] * 6).long().clamp(max=5)
    assert torch.equal(out["mask"][ok], expected[ok])
    # the ignore pixel moved with the rest: exactly one per sample
    assert ((~ok).sum(dim=(1, 2)) == 1).all()
    # each sample got one of the 8 flips/rotations of the square, and not all the identity
    # (probability (1/8)^6 per batch; for these seeds 4 to 6 samples of 6 changed)
    dihedral = [lambda t, k=k, f=f: torch.rot90(t.flip(-1) if f else t, k, (-2, -1))
                for k in range(4) for f in (False, True)]  # fmt: skip
    picked = []
    for i in range(len(batch["image"])):
        found = [
            j
            for j, d in enumerate(dihedral)
            if torch.allclose(out["image"][i], d(batch["image"][i]), atol=1e-5)  # kornia warps
        ]
        assert len(found) == 1, (i, found)
        picked.append(found[0])
    assert set(picked) != {0}, picked


def test_scaling_pads_with_ignore_and_invalid():
    torch.manual_seed(0)
    batch = _batch()
    out = JointAugmentation(hflip=0, vflip=0, rotate90=False, scale=(0.5, 0.6))(batch)
    assert (out["mask"] == IGNORE_INDEX).float().mean() > 0.3
    assert set(out["aux_valid"].unique().tolist()) <= {0.0, 1.0}
    padded = out["aux_valid"][:, 0] == 0
    assert (out["mask"][padded] == IGNORE_INDEX).float().mean() > 0.95
    assert set(out["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 5, IGNORE_INDEX}


def test_no_ops_and_other_keys_pass_through():
    batch = {**_batch(), "bounds": torch.zeros(6, 9)}
    assert JointAugmentation(hflip=0, vflip=0, rotate90=False)(batch) is batch
    out = JointAugmentation(hflip=1.0, vflip=0, rotate90=False)(batch)
    assert out["bounds"] is batch["bounds"]
