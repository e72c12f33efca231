"""The grouping dock after a zero-shot scan: sizes, method (and the cut value of ncut), the group filter, moving an
image to the other group (flags, view and export follow), another method."""

from __future__ import annotations

import csv
from pathlib import Path

from app.grouping import GroupingPanel
from core.results import ScanResult, ScanRow
from tests.app.conftest import open_folder, wait_idle

#: ldm-zero-shot's batch fallback, tiny.
TINY_LDM = {"image_size": 8, "block_out_channels": (8, 16), "norm_num_groups": 4, "epochs": 2, "timesteps": 3,
            "train_timesteps": 50, "batch_size": 4}


def zero_shot_scan(qtbot, win, folder) -> ScanResult:
    open_folder(qtbot, win, folder)
    win.select_detector("ldm-zero-shot")
    for k, v in TINY_LDM.items():
        win.detector_panel.form.set_value(k, v)
    assert "Zero-shot" in win.detector_panel.model_label.text()
    assert win.run_detector()  # no good folder and no model needed
    qtbot.waitUntil(lambda: win.controller.result is not None and not win.controller.busy, timeout=30000)
    wait_idle(qtbot, win.controller)
    return win.controller.result


def test_grouping_dock_filter_move_and_export(qtbot, window, parts, tmp_path):
    res = zero_shot_scan(qtbot, window, parts.batch)
    g = res.grouping
    assert g is not None and g.method == "kmeans" and sum(g.sizes) == parts.n_readable  # the default split
    panel, gallery = window.grouping, window.gallery
    normal, suspect = g.sizes
    assert panel.sizes_label.text() == f"normal: {normal}   suspect: {suspect}"
    assert panel.info_label.text().startswith("k-means · ") and "cut value" not in panel.info_label.text()
    assert window.histogram.count_label.text() == f"suspect group: {suspect} / {parts.n_readable}"
    assert len(panel.points.data) == parts.n_readable and window.docks["grouping"].isVisible()
    assert gallery.group_combo.isVisible()
    # the two groups as filterable galleries
    gallery.set_group_filter("suspect")
    assert len(gallery.visible_paths()) == suspect
    gallery.set_group_filter("normal")
    assert len(gallery.visible_paths()) == normal
    gallery.set_group_filter(None)
    # move the selected image to the other group with the dock's button
    path = res.rows[0].path
    before = res.rows[0].columns["group"]
    gallery.select_path(path)
    assert panel.move_button.isEnabled()
    panel.move_button.click()
    after = "normal" if before == "suspect" else "suspect"
    assert res.rows[0].columns["group"] == after and res.rows[0].flagged == (after == "suspect")
    assert "1 moved by hand" in panel.info_label.text()
    assert window.image_view.flag_label.text() == ("SUSPECT" if after == "suspect" else "normal")
    gallery.set_group_filter(after)
    assert path in gallery.visible_paths()
    gallery.set_group_filter(None)
    # the export follows the edited groups
    assert window.controller.export("results", tmp_path / "out")
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=10000)
    rows = {r["path"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert rows[str(path)]["group"] == after and rows[str(path)]["flagged"] == str(after == "suspect").lower()
    flagged = (tmp_path / "out" / "flagged.txt").read_text().splitlines()
    assert sorted(flagged) == sorted(str(r.path) for r in res.rows if r.flagged)
    # the context menu's signal moves it back; another method regroups (hand moves dropped)
    window.gallery.move_requested.emit(path, before)
    assert res.rows[0].columns["group"] == before and res.grouping.moved == []
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("ncut"))
    panel.method_changed.emit("ncut")
    assert res.grouping.method == "ncut" and "normalized cut" in panel.info_label.text()
    assert "cut value" in panel.info_label.text()


def test_panel_without_groups_explains_itself(qtbot):
    panel = GroupingPanel()
    qtbot.addWidget(panel)
    assert not panel.method_combo.isEnabled() and not panel.move_button.isEnabled()
    one = ScanResult("ldm-zero-shot", [ScanRow(Path("a.png"), 0.5, None, (8, 8))], [], None,
                     grouping_note="grouping needs at least 2 images")
    panel.set_result(one)
    assert "at least 2 images" in panel.info_label.text() and panel.sizes_label.text() == "no groups yet"


def test_cli_scan_of_a_zero_shot_detector_needs_no_training_and_writes_groups(parts, tmp_path, capsys):
    from app.cli import main

    sets = [x for k, v in TINY_LDM.items() for x in ("--set", f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}")]
    out = tmp_path / "out"
    assert main(["scan", str(parts.batch), "--detector", "ldm-zero-shot", *sets, "--group", "gmm", "--out", str(out),
                 "--no-heatmaps"]) == 0
    assert "groups by gmm" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == parts.n_readable and {r["group"] for r in rows} <= {"normal", "suspect"}
    assert all((r["flagged"] == "true") == (r["group"] == "suspect") for r in rows)
    assert main(["scan", str(parts.batch), "--detector", "pixel-gaussian", "--group", "ncut",
                 "--train", str(parts.good), "--out", str(out)]) == 2
    assert "zero-shot detectors only" in capsys.readouterr().err


def test_grouping_dock_shows_the_mutual_split(qtbot, window, parts):
    """The zero-shot detector offered first splits the batch in the same dock; the dock's axis names
    the detector whose scores it shows (it said "mean noise estimation error", ldm-zero-shot's, for any)."""
    open_folder(qtbot, window, parts.batch)
    window.select_detector("mutual")
    for k, v in {"backbone": "tiny-random", "image_size": 32, "references": 4}.items():
        window.detector_panel.form.set_value(k, v)
    assert window.run_detector()
    qtbot.waitUntil(lambda: window.controller.result is not None and not window.controller.busy, timeout=30000)
    wait_idle(qtbot, window.controller)
    res = window.controller.result
    assert res.detector == "mutual" and res.grouping is not None and res.grouping.method == "gmm"
    panel = window.grouping
    assert window.docks["grouping"].isVisible() and len(panel.points.data) == parts.n_readable
    assert panel.sizes_label.text() == f"normal: {res.grouping.sizes[0]}   suspect: {res.grouping.sizes[1]}"
    label = panel.plot.getPlotItem().getAxis("bottom").labelText
    assert "mutual" in label and "noise" not in label


def test_no_grouping_method_is_shown_before_a_scan_has_grouped(qtbot, window, parts):
    panel = window.grouping
    assert panel.method_combo.currentIndex() == -1 and panel.method_combo.currentText() == ""  # not "normalized cut"
    res = zero_shot_scan(qtbot, window, parts.batch)
    assert panel.method_combo.currentData() == res.grouping.method
    panel.set_result(None)
    assert panel.method_combo.currentIndex() == -1
