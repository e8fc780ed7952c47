"""OCR corruption: the 3:4:3 level ratio, the exact parameters of each level (measured on flat
images and an impulse), locality to the text box, determinism, and the CLI on rendered
documents."""
import json

import numpy as np
import pytest
from PIL import Image

from omni_data_prep import ocr_corruption
from omni_data_prep.ocr_corruption import (LEVELS, CorruptionConfig, TextRegion,
                                           corrupt_documents, corrupt_region, gaussian_blur,
                                           level_for, render_document)

BOX = (20, 10, 180, 110)


def _flat(value=128, shape=(128, 200)):
    return np.full((*shape, 3), value, np.uint8)


def _inside(image, box=BOX):
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]


def _outside_mask(shape, box=BOX):
    mask = np.ones(shape[:2], bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = False
    return mask


def test_levels_come_in_3_4_3_in_every_block_of_ten():
    draws = [level_for(i, seed=7) for i in range(1000)]
    assert [draws.count(level) for level in LEVELS] == [300, 400, 300]
    for start in range(0, 1000, 10):
        block = draws[start:start + 10]
        assert [block.count(level) for level in LEVELS] == [3, 4, 3]
    assert draws == [level_for(i, seed=7) for i in range(1000)], "deterministic"
    assert draws != [level_for(i, seed=8) for i in range(1000)], "the seed matters"
    unaligned = [level_for(i, seed=3) for i in range(5, 1005)]
    for level, share in zip(LEVELS, (0.3, 0.4, 0.3)):
        assert abs(unaligned.count(level) / 1000 - share) < 0.02


@pytest.mark.parametrize("level, sigma", [("low", 10.0), ("medium", 25.0)])
def test_noise_std_inside_the_box_outside_untouched(level, sigma):
    image = _flat()
    out = corrupt_region(image, BOX, level, np.random.default_rng(0))
    noise = _inside(out).astype(np.float64) - 128
    assert abs(noise.std() - sigma) < 0.03 * sigma
    assert abs(noise.mean()) < 0.5
    np.testing.assert_array_equal(out[_outside_mask(out.shape)], image[_outside_mask(out.shape)])


def test_medium_blur_is_the_5x5_binomial_kernel():
    impulse = np.zeros((9, 9, 1), np.uint8)
    impulse[4, 4] = 256 - 1  # 255 spread over the kernel
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256
    np.testing.assert_array_equal(gaussian_blur(impulse, 5)[2:7, 2:7, 0],
                                  np.rint(255 * kernel).astype(np.uint8))
    assert gaussian_blur(impulse, 5)[:2].max() == 0

    # Without noise, "medium" is that blur inside the box and nothing outside it.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    box = (10, 12, 50, 40)
    out = corrupt_region(image, box, "medium", rng, CorruptionConfig(medium_sigma=0.0))
    np.testing.assert_array_equal(_inside(out, box), _inside(gaussian_blur(image, 5), box))
    np.testing.assert_array_equal(out[_outside_mask(out.shape, box)],
                                  image[_outside_mask(out.shape, box)])


def test_high_masks_exactly_the_text_boxes():
    pixels, regions = render_document(["Invoice 2024-07", "Total due: 31.50 EUR", "Thank you"])
    samples = list(corrupt_documents([(pixels, regions)], seed=0,
                                     config=CorruptionConfig(mask_value=0)))
    assert [s.target_text for s in samples] == [r.text for r in regions]
    for region in regions:
        inside = _inside(pixels, region.box)
        assert (inside < 128).any(), "the box holds the rendered text"
        out = corrupt_region(pixels, region.box, "high", np.random.default_rng(0))
        assert (_inside(out, region.box) == 0).all()
        outside = _outside_mask(pixels.shape, region.box)
        np.testing.assert_array_equal(out[outside], pixels[outside])


def test_corrupt_documents_is_deterministic_per_draw():
    doc = render_document(["alpha beta", "gamma delta"])
    first = list(corrupt_documents([doc, doc], seed=5))
    second = list(corrupt_documents([doc, doc], seed=5))
    assert [s.level for s in first] == [level_for(i, 5) for i in range(4)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.image, b.image)
    with pytest.raises(ValueError, match="unknown corruption level"):
        corrupt_region(doc[0], doc[1][0].box, "extreme", np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        corrupt_region(doc[0], (5, 5, 5, 9), "low", np.random.default_rng(0))


def test_cli_writes_plan_records_and_counts_bad_ones(tmp_path, capsys):
    records = []
    for i in range(4):
        pixels, regions = render_document([f"page {i} line one", f"line two of {i}"])
        Image.fromarray(pixels).save(tmp_path / f"doc{i}.png")
        records.append({"image": f"doc{i}.png",
                        "regions": [{"text": r.text, "bbox": list(r.box)} for r in regions]})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records += [{"image": "absent.png", "regions": []}, {"image": "broken.png", "regions": []},
                {"image": "doc0.png"}]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))

    summary = ocr_corruption.main(["--input", str(jsonl), "--output-dir", str(tmp_path / "out"),
                                   "--seed", "3"])
    assert summary["samples"] == 8
    assert summary["levels"] == {lv: [level_for(i, 3) for i in range(8)].count(lv)
                                 for lv in LEVELS}
    assert summary["skipped"] == {"missing_file": 1, "corrupt_image": 1, "bad_record": 1}
    lines = [json.loads(x) for x in (tmp_path / "out" / "ocr.jsonl").read_text().splitlines()]
    assert [x["target_text"] for x in lines[:2]] == ["page 0 line one", "line two of 0"]
    assert lines[0]["original_image"].endswith("doc0.png")
    assert {x["damage_level"] for x in lines} <= set(LEVELS)
    first = np.asarray(Image.open(tmp_path / "out" / lines[0]["corrupted_image"]))
    expected = next(corrupt_documents([(np.asarray(Image.open(tmp_path / "doc0.png")),
                                        [TextRegion("page 0 line one",
                                                    tuple(records[0]["regions"][0]["bbox"]))])],
                                      seed=3))
    np.testing.assert_array_equal(first, expected.image)

    with pytest.raises(SystemExit):
        ocr_corruption.main(["--input", str(jsonl), "--output-dir", str(tmp_path / "strict"),
                             "--strict"])
    assert f"{jsonl}:5: missing_file" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "ocr.jsonl").exists()
