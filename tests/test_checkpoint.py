import hashlib
import zipfile

import pytest
import torch

from rsprompt.engine.checkpoint import (
    CheckpointError,
    load_model_checkpoint,
    model_meta,
    save_model_checkpoint,
)
from rsprompt.models.registry import build_model

pytestmark = pytest.mark.usefixtures("tiny_method")

#: What model.ckpt must hold for the tiny model (engine_fixtures.TinyModel), by hand: the trainable
#: modules used at inference (aux_stem conv, adapter conv + BatchNorm with its buffers, decoder),
#: never the frozen ``encoder`` conv nor the training-only ``aux_head``.
INFERENCE_TENSORS = {
    "aux_stem.weight",
    "aux_stem.bias",
    "adapter.0.weight",
    "adapter.0.bias",
    "adapter.1.weight",
    "adapter.1.bias",
    "adapter.1.running_mean",
    "adapter.1.running_var",
    "adapter.1.num_batches_tracked",
    "decoder.weight",
    "decoder.bias",
}


def _trained(seed=0, weights=None):
    torch.manual_seed(123)
    m = (
        build_model("tiny", "tinyconv", 3, 1, weights=weights, encoder_seed=seed)
        if weights is None
        else build_model("tiny", "tinyconv", 3, 1, weights=weights)
    )
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
        m.adapter[1].running_mean.fill_(0.25)
    return m


def _meta(m, weights=None, seed=0):
    return model_meta(
        m,
        weights=weights,
        encoder_seed=seed,
        classes=["a", "b", "c"],
        colors=[[1, 2, 3]] * 3,
        dataset="tiny",
        patch_size=16,
    )


def test_roundtrip_random_encoder(tmp_path):
    m = _trained(seed=7)
    path = save_model_checkpoint(tmp_path / "model.ckpt", m, _meta(m, seed=7))
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp file left
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == "rsprompt-model" and obj["version"] == 1
    assert not any(k.startswith(("encoder.", "aux_head.")) for k in obj["state_dict"])
    assert "adapter.1.running_mean" in obj["state_dict"]
    m2, meta = load_model_checkpoint(path)
    assert meta["encoder_seed"] == 7 and meta["classes"] == ["a", "b", "c"]
    x = torch.randn(2, 3, 16, 16)
    a = torch.randn(2, 1, 16, 16)
    m.eval()
    torch.testing.assert_close(m2(x, a), m(x, a))
    assert not m2.training


def _tensor_bytes_in_file(path) -> int:
    """Bytes of tensor data stored in a torch.save zip file (its ``<name>/data/<n>`` members)."""
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if i.filename.split("/")[-2:-1] == ["data"])


def test_checkpoint_holds_exactly_the_trainable_inference_tensors(tmp_path):
    m = _trained()
    path = save_model_checkpoint(tmp_path / "model.ckpt", m, _meta(m))
    obj = torch.load(path, weights_only=True)
    assert set(obj["state_dict"]) == INFERENCE_TENSORS
    own = m.state_dict()
    for key, value in obj["state_dict"].items():
        assert torch.equal(value, own[key]), key  # the trained values, not a fresh init
    # Every trainable parameter is saved but the training-only head's (independent count:
    # named_parameters with requires_grad).
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable - set(obj["state_dict"]) == {"aux_head.weight", "aux_head.bias"}
    # Size: the file's tensor data is exactly these tensors' bytes. The frozen encoder alone
    # (3·8·3·3 + 8 = 224 float32 = 896 bytes) would exceed it.
    expected = sum(own[k].numel() * own[k].element_size() for k in INFERENCE_TENSORS)
    assert _tensor_bytes_in_file(path) == expected
    encoder = {f"encoder.{k}": v for k, v in m.encoder.state_dict().items()}
    torch.save({**obj, "state_dict": {**obj["state_dict"], **encoder}}, tmp_path / "fat.ckpt")
    assert _tensor_bytes_in_file(tmp_path / "fat.ckpt") == expected + 896  # the check can fail


def test_weights_file_sha_check(tmp_path):
    enc = torch.nn.Conv2d(3, 8, 3, padding=1)
    wfile = tmp_path / "enc.pth"
    torch.save(enc.state_dict(), wfile)
    m = _trained(weights=str(wfile))
    path = save_model_checkpoint(tmp_path / "model.ckpt", m, _meta(m, weights=str(wfile)))
    _, meta = load_model_checkpoint(path)
    assert meta["weights"]["sha256"] and meta["encoder_fingerprint"] is None
    moved = tmp_path / "moved.pth"
    wfile.rename(moved)
    with pytest.raises(CheckpointError, match="--weights PATH"):
        load_model_checkpoint(path)
    model, meta = load_model_checkpoint(path, weights=str(moved))  # moved file, same sha
    assert meta["weights"]["sha256"] == hashlib.sha256(moved.read_bytes()).hexdigest()
    loaded = torch.load(moved, weights_only=True)  # the encoder IS the moved file's weights
    for key, value in loaded.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    x, a = torch.randn(1, 3, 16, 16), torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, a), m.eval()(x, a))
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Conv2d(3, 8, 3, padding=1).state_dict(), other)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model_checkpoint(path, weights=str(other))


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model_checkpoint(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model_checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an rsprompt"):
        load_model_checkpoint(foreign)
    light = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2"}, light)
    with pytest.raises(CheckpointError, match="resume checkpoint"):
        load_model_checkpoint(light)
    m = _trained()
    meta = _meta(m)
    meta["encoder_fingerprint"] = {
        "numel": meta["encoder_fingerprint"]["numel"],
        "sum": 1e9,
        "abs_sum": 1e9,
    }
    p = save_model_checkpoint(tmp_path / "fp.ckpt", m, meta)
    with pytest.raises(CheckpointError, match="differs"):
        load_model_checkpoint(p)
