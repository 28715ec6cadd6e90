"""The seam score (issue #15): :mod:`fluxsr.evaluation.seams` on synthetic images with and without steps at the
tile lines and on a real photo, and its columns in ``fluxsr bench --seams``."""

from __future__ import annotations

import math

import pytest
import torch

from fluxsr.evaluation import seams as SEAM
from fluxsr.evaluation import speed_config as SCF
from fluxsr.evaluation import speed_report as SREP
from fluxsr.evaluation import speed_run as SRUN
from fluxsr.evaluation.speed_rows import photo_input
from fluxsr.inference.tiling import TileSpec, snapped, tile_starts, tiled_map
from fluxsr.io.images import read_image, resize
from tests.paths import ROOT

PHOTO = ROOT / "examples" / "dped_crop00061.png"
BUNDLED_TILES = snapped(256, 32, 8)  # the bundled model's default tiles (its multiple: 8 px)


def smooth(size: int) -> torch.Tensor:
    """Smooth colour ramps with a gentle ripple of the tiles' 8 px alignment period (the bundled model's): no edge
    anywhere, and a gradient energy that depends on a line's phase in that period (only same-phase lines compare
    fairly)."""
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    ripple_x, ripple_y = (0.01 * torch.sin(2 * math.pi * (t + 3) / 8) for t in (x, y))
    return torch.stack(
        [0.2 + x / (2 * size) + ripple_x, 0.2 + y / (2 * size) + ripple_y, 0.3 + (x + y) / (4 * size)]
    )


def test_seam_lines_are_the_edges_of_the_tiles_shared_bands():
    spec = TileSpec(256, 32, 16)
    assert tile_starts(640, 256, 32, 16) == [0, 224, 384]
    assert SEAM.seam_lines(640, spec) == [224, 256, 384, 480]
    assert SEAM.seam_lines(640, TileSpec(320, 0, 16)) == [320]  # no overlap: one line where the tiles meet
    assert SEAM.seam_lines(200, spec) == []  # one tile
    assert all(j % 16 == 0 for j in SEAM.reference_lines(640, spec))
    assert not set(SEAM.reference_lines(640, spec)) & set(SEAM.seam_lines(640, spec))


def test_a_step_at_the_tile_lines_scores_high_and_a_smooth_image_about_one():
    image = smooth(640)
    assert SEAM.seam_ratio(image, BUNDLED_TILES) == pytest.approx(1.0, abs=1e-6)
    energy = SEAM.line_energy(image, -1)
    assert abs(float(energy[15]) / float(energy.mean()) - 1) > 0.2  # against every line it would not be 1
    stepped = image.clone()
    for j in SEAM.seam_lines(640, BUNDLED_TILES):
        stepped[:, j:, :] += 0.02 * (-1) ** j  # a faint step, rows and columns
        stepped[:, :, j:] += 0.02 * (-1) ** j
    assert SEAM.seam_ratio(stepped, BUNDLED_TILES) > 10
    assert SEAM.seam_ratio(image[:, :200, :200], BUNDLED_TILES) is None  # one tile: no boundary


def disagreeing_tiles(x: torch.Tensor, spec: TileSpec) -> torch.Tensor:
    """``x`` cut into tiles of ``spec`` that each add their own offset (as a model does when its tiles see
    different context), blended as the pipeline blends."""
    return tiled_map(lambda t, o: t + 0.05 * ((o[0][0] // 160 + o[0][1] // 160) % 2), x, spec)[0]


def test_tiles_that_disagree_show_in_the_scores():
    """Hard tile edges (no overlap) raise the ratio well above the same photo's; blended over an overlap the
    offsets turn into gentle ramps the ratio does not see, but the tiled-vs-untiled PSNR does."""
    x = resize(read_image(PHOTO).rgb[None], (640, 640))
    for spec in (TileSpec(256, 0, 16), BUNDLED_TILES):
        same = SEAM.seam_scores(tiled_map(lambda t, _o: t, x, spec)[0], spec, x[0])
        disagree = SEAM.seam_scores(disagreeing_tiles(x, spec), spec, x[0])
        assert same["tiled_psnr"] > 60 and disagree["tiled_psnr"] < 40  # identical up to rounding / not
    assert disagree["seam_ratio"] == pytest.approx(same["seam_ratio"], rel=0.05)  # blended: no line shows
    hard, x = TileSpec(256, 0, 16), resize(read_image(PHOTO).rgb[None], (768, 768))  # 3 x 3 tiles, no band
    assert SEAM.seam_ratio(disagreeing_tiles(x, hard), hard) > 3 * SEAM.seam_ratio(x[0], hard)


def test_identical_flat_images_are_seamless():
    flat = torch.full((3, 640, 640), 0.5)
    assert SEAM.seam_scores(flat, BUNDLED_TILES, flat) == {"seam_ratio": 1.0, "tiled_psnr": math.inf}


def test_bench_reports_seam_columns_on_a_real_photo(tmp_path):
    cfg = SCF.BenchConfig(
        model="tiny",
        sizes=(192,),
        repeat=1,
        warmup=0,
        device="cpu",
        rows=("fluxsr", "bicubic"),
        tile=64,
        overlap=16,
        seams=True,
        photo=PHOTO,
    )
    result = SRUN.run_bench(cfg, log=lambda s: None)
    fluxsr, bicubic = result["rows"]
    assert fluxsr["seam_tile"] == bicubic["seam_tile"] == 64 and fluxsr["seam_overlap"] == 16
    assert fluxsr["seam_ratio"] > 0 and fluxsr["tiled_psnr"] > 0 and bicubic["tiled_psnr"] is None
    assert 0.3 < bicubic["seam_ratio"] < 3
    table = SREP.to_markdown(result)
    assert "| 48->192 | bicubic | 64 (16) |" in table and "seam ratio" in table
    assert "seam ratio" in SREP.format_row(fluxsr)
    plain = SREP.to_markdown({**result, "rows": [{k: v for k, v in bicubic.items() if "seam" not in k}]})
    assert "Seams" not in plain


def test_photo_input_is_the_photos_centre(tmp_path):
    path = photo_input(PHOTO, tmp_path / "in.png", 960)  # the photo is 240 px: an exact copy
    assert torch.equal(read_image(path).rgb, read_image(PHOTO).rgb)
    small = read_image(photo_input(PHOTO, tmp_path / "small.png", 64)).rgb
    assert small.shape == (3, 16, 16)
