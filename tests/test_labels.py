import numpy as np
import pytest

from rsprompt.data.labels import (
    IGNORE_INDEX,
    ISPRS_CLASSES,
    class_table,
    decode_isprs_rgb,
    decode_whu_labels,
    encode_isprs_rgb,
    encode_whu_labels,
)


def test_isprs_roundtrip():
    rng = np.random.default_rng(0)
    index = rng.integers(0, 6, size=(20, 30)).astype(np.uint8)
    index[0, :5] = IGNORE_INDEX
    assert np.array_equal(decode_isprs_rgb(encode_isprs_rgb(index)), index)


def test_isprs_off_palette_colours_are_matched_or_reported_not_class_zero():
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0] = (252, 255, 0)  # Potsdam 6_7 car colour
    rgb[0, 1] = (128, 64, 200)  # far from every colour
    rgb[0, 2] = (255, 255, 255)
    out, report = decode_isprs_rgb(rgb, return_report=True)
    assert out.tolist() == [[4, IGNORE_INDEX, 0]]
    assert report.near == 1 and report.unmatched == 1


def test_isprs_channels_first_and_bad_shape():
    chw = np.moveaxis(encode_isprs_rgb(np.array([[1, 2]], np.uint8)), -1, 0)
    assert decode_isprs_rgb(chw).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="3 channels"):
        decode_isprs_rgb(np.zeros((4, 4), np.uint8))


def test_whu_labels():
    values = np.array([[0, 10, 70, 15]], np.uint8)
    assert decode_whu_labels(values).tolist() == [[IGNORE_INDEX, 0, 6, IGNORE_INDEX]]
    assert decode_whu_labels(values, keep_background=True).tolist() == [[0, 1, 7, IGNORE_INDEX]]
    assert encode_whu_labels(np.array([0, 6, IGNORE_INDEX])).tolist() == [10, 70, 0]


def test_class_tables():
    assert class_table("potsdam") is ISPRS_CLASSES
    assert class_table("whu-opt-sar").num_classes == 7
    with pytest.raises(ValueError, match="unknown dataset"):
        class_table("isaid")


def test_real_isprs_labels_decode_to_index_files(shared_data):
    from PIL import Image

    for area in ("vaihingen/derived/area1_0_0_512_512", "potsdam/derived/2_10_0_0_512_512"):
        rgb = np.asarray(
            Image.open(shared_data / "isprs" / f"{area}_label_isprs_rgb_noBoundary.png").convert(
                "RGB"
            )
        )
        expected = np.asarray(
            Image.open(shared_data / "isprs" / f"{area}_label_idx0-5_ignore255.png")
        )
        decoded, report = decode_isprs_rgb(rgb, return_report=True)
        assert np.array_equal(decoded, expected), area
        assert report.unmatched == 0
