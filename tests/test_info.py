"""``rsprompt info``: parameter tables built without weights (meta device, no forward pass)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rsprompt.cli import main
from rsprompt.models import registry
from rsprompt.models.params import build_for_counting
from rsprompt.models.registry import available_methods

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: Paper encoder of each method. A package method missing here is still checked by the generic
#: test, on the encoder of its shipped config (and fails when it has none).
PAPER_ENCODERS = {
    "mobanet": "vit_large_patch14_dinov2",
    "dplnet": "mit_b5",
    "gopt": "vit_base_patch16_224",
    "spm": "resnet50",
    "rpn": "ViT-B-16",
}


def run_info(*args: str) -> dict:
    result = CliRunner().invoke(main, ["info", *args, "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output  # ONE JSON object, nothing else on stdout
    return json.loads(lines[0])


def test_mobanet_paper_configuration():
    info = run_info("--method", "mobanet", "--encoder", "vit_large_patch14_dinov2", "-k", "6")
    for key in (
        "method",
        "encoder",
        "num_classes",
        "frozen",
        "trainable",
        "trainable_inference",
        "decoder",
        "modules",
    ):
        assert key in info
    assert info["method"] == "mobanet" and info["encoder"] == "vit_large_patch14_dinov2"
    assert info["aux_channels"] == 1  # the paper configuration's default
    assert info["trainable"] == 8_981_376
    assert info["trainable_inference"] == 7_797_632
    assert abs(info["frozen"] - 304_367_616) <= 0.001 * 304_367_616
    assert info["decoder"] == 669_568
    assert info["modules"]["aux_heads"] == 1_183_744
    assert info["training_only_modules"] == ["aux_heads"]


@pytest.mark.parametrize(
    ("encoder", "trainable", "inference"),
    [
        ("vit_small_patch14_dinov2", 3_251_456, 2_067_712),
        ("vit_base_patch14_dinov2", 6_179_456, 4_995_712),
    ],
)
def test_mobanet_small_and_base(encoder, trainable, inference):
    info = run_info("-m", "mobanet", "-e", encoder, "-k", "6")
    assert (info["trainable"], info["trainable_inference"]) == (trainable, inference)


def test_mobanet_k8():
    info = run_info("-m", "mobanet", "-e", "vit_large_patch14_dinov2", "-k", "8")
    assert (info["trainable"], info["trainable_inference"]) == (8_982_528, 7_797_760)


def test_method_options_pass_through():
    info = run_info(
        "-m",
        "mobanet",
        "-e",
        "vit_small_patch14_dinov2",
        "-k",
        "6",
        "-o",
        "mcrm=false",
        "-o",
        "taps=[1, 3, 5, 11]",
        "--img-size",
        "266",
    )
    assert info["trainable"] == info["trainable_inference"] == 2_067_712
    assert info["options"] == {"mcrm": False, "taps": [1, 3, 5, 11], "img_size": 266}
    assert info["frozen"] < 22_056_192  # a 19x19 position embedding instead of 37x37


def test_human_table():
    result = CliRunner().invoke(
        main, ["info", "-m", "mobanet", "-e", "vit_large_patch14_dinov2", "-k", "6"]
    )
    assert result.exit_code == 0, result.output
    for text in (
        "aux_patch_embed",
        "cpia",
        "dgfm",
        "proj",
        "decoder",
        "aux_heads",
        "training only",
        "8,981,376",
        "7,797,632",
        "304,367,616",
    ):
        assert text in result.output
    # prompts/adapters (trainable at inference minus decoder) over the frozen encoder
    share = (7_797_632 - 669_568) / 304_367_616
    assert "prompts/adapters : encoder" in result.output
    assert f"{share:.2%}" in result.output


def test_cnn_and_mit_encoders():
    info = run_info("-m", "mobanet", "-e", "tf_efficientnet_lite0", "-k", "6")
    assert info["frozen"] > 0 and info["trainable"] > info["trainable_inference"]
    info = run_info("-m", "mobanet", "-e", "mit_b0", "-k", "6")  # built on the CPU, not meta
    assert info["modules"]["decoder"] == 669_568


def test_errors_are_clean():
    runner = CliRunner()
    result = runner.invoke(main, ["info", "-m", "nope", "-e", "resnet18", "-k", "6"])
    assert result.exit_code != 0 and "mobanet" in result.output
    result = runner.invoke(
        main, ["info", "-m", "mobanet", "-e", "resnet18", "-k", "6", "--aux-channels", "0"]
    )
    assert result.exit_code != 0 and "aux_channels" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["info", "-m", "mobanet", "-e", "resnet18", "-k", "6", "-o", "x"])
    assert result.exit_code != 0 and "KEY=VALUE" in result.output


def _package_methods() -> list[str]:
    """Every method the package registers (test-only methods, e.g. ``tiny``, left out)."""
    return [m for m in available_methods() if registry.METHOD_MODULES[m].startswith("rsprompt.")]


def _encoder_for(method: str) -> str:
    """The paper encoder of ``method``: the table above, else a shipped config's encoder."""
    if method in PAPER_ENCODERS:
        return PAPER_ENCODERS[method]
    for config in sorted(CONFIGS.glob(f"{method}_*.yaml")):
        return yaml.safe_load(config.read_text())["model"]["encoder"]
    pytest.fail(f"no encoder known for method {method!r}: add it to PAPER_ENCODERS")


def _counts_by_hand(model) -> dict:
    """Parameter counts of a built model, from named_parameters alone."""
    modules: dict[str, int] = {}
    frozen = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = name.split(".", 1)[0]
            modules[top] = modules.get(top, 0) + p.numel()
        else:
            frozen += p.numel()
    training_only = sum(modules.get(n, 0) for n in type(model).training_only_modules)
    return {
        "modules": modules,
        "frozen": frozen,
        "trainable": sum(modules.values()),
        "trainable_inference": sum(modules.values()) - training_only,
        "decoder": sum(modules.get(n, 0) for n in type(model).decoder_modules),
    }


def test_the_tiny_test_method_is_not_a_package_method():
    import engine_fixtures as ef

    assert "tiny" not in _package_methods()
    assert set(_package_methods()) >= set(PAPER_ENCODERS)
    before = "tiny" in available_methods()
    with ef.registered_tiny():
        assert "tiny" in available_methods() and "tiny" not in _package_methods()
        with ef.registered_tiny():  # nested: the inner exit keeps the outer registration
            pass
        assert "tiny" in available_methods()
    assert ("tiny" in available_methods()) == before  # the registry as it was


@pytest.mark.parametrize("method", _package_methods())
def test_every_registered_method(method):
    encoder = _encoder_for(method)
    info = run_info("-m", method, "-e", encoder, "-k", "6")
    assert info["method"] == method and info["encoder"] == encoder
    model = build_for_counting(method, encoder, 6)
    expected = _counts_by_hand(model)
    for key, value in expected.items():
        assert info[key] == value, key
    # The encoder is frozen, every parameter of it, and it dwarfs what trains at inference.
    for name in type(model).frozen_modules:
        module = getattr(model, name, None)
        if module is not None:
            assert not any(p.requires_grad for p in module.parameters()), name
    assert info["frozen"] > info["trainable_inference"] > 0
    assert set(info["training_only_modules"]) <= set(info["modules"])
