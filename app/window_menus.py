"""The window's menus and keys: every action with its shortcut, Help > Keyboard shortcuts and About."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QDialog, QLabel, QMessageBox, QVBoxLayout

from app.review_panel import NEXT_KEY, NOTE_KEY, VERDICT_KEYS
from core.detectors.registry import REGISTRY

APP_NAME = "Anomaly Inspector"
STATE_VERSION = 1  # of the docks' layout kept in the settings

#: Every key of the window, for Help > Keyboard shortcuts (the menus show the same keys).
SHORTCUTS = [
    ("Arrows, PageUp / PageDown, Home / End", "move through the gallery"),
    (VERDICT_KEYS["ok"], "verdict OK (the part is good)"),
    (VERDICT_KEYS["ng"], "verdict NG (the part is defective)"),
    (VERDICT_KEYS["unsure"], "verdict unsure"),
    (VERDICT_KEYS[None], "clear the verdict"),
    (NOTE_KEY, "write a note on the image"),
    (NEXT_KEY, "'to review' filter: unreviewed images in the review band or flagged"),
    ("F", "flagged images only"),
    ("S / N", "sort by score / by name"),
    ("H / G", "heat map / ground-truth outline"),
    ("+ / - / 0 / 1", "zoom in / out, fit, 1:1"),
    ("Ctrl+R or F5 / Ctrl+T", "run / train the detector"),
    ("Esc", "cancel the running task (asks first)"),
]


class MenusMixin:
    """The menu bar of :class:`~app.main_window.MainWindow` (its slots live in the other mixins)."""

    def _action(self, menu, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        act = QAction(text, self)
        if shortcut:
            act.setShortcuts(shortcut if isinstance(shortcut, list) else [QKeySequence(shortcut)])
            act.setShortcutContext(Qt.WindowShortcut)
        if tip:
            act.setStatusTip(tip)
            act.setToolTip(tip)
        act.triggered.connect(lambda _checked=False: slot())
        menu.addAction(act)
        self.addAction(act)  # shortcuts work while the menu bar is hidden too
        return act

    def _build_menus(self) -> None:
        mb = self.menuBar()
        m = mb.addMenu("&File")
        self._action(m, "&Open folder…", self.open_folder, QKeySequence.Open, "Open a folder of images to inspect")
        self.recent_menu = m.addMenu("Open &recent")
        self._action(m, "Open s&ession file…", self.open_session_file, tip="Open a session (.db), e.g. one "
                     "written by 'scan --session' on a server, with its folder")
        self.reopen_action = self._action(m, "Reopen &last session", self.reopen_last_session)
        self.save_session_action = self._action(m, "Save session &as…", self.save_session_as, "Ctrl+Shift+S",
                                                "Copy the session (results and decisions) to a file and go on there")
        m.addSeparator()
        self._action(m, "Open &model…", self.open_model, "Ctrl+Shift+O", "Load a saved detector")
        self.save_model_action = self._action(m, "&Save model…", self.save_model, QKeySequence.Save,
                                              "Save the trained detector to a folder")
        m.addSeparator()
        self._action(m, "&Quit", self.close, QKeySequence.Quit)

        m = mb.addMenu("&View")
        for dock in self.docks.values():
            m.addAction(dock.toggleViewAction())
        m.addSeparator()
        self._action(m, "Toggle &heat map", self.image_view.toggle_heat, "H")
        self._action(m, "Toggle &ground-truth outline", self.image_view.toggle_outline, "G")
        self._action(m, "Zoom &in", lambda: self.image_view.zoom(1.25), [QKeySequence("+"), QKeySequence("=")])
        self._action(m, "Zoom &out", lambda: self.image_view.zoom(1 / 1.25), "-")
        self._action(m, "&Fit image", self.image_view.fit, "0")
        self._action(m, "&Actual size (1:1)", self.image_view.actual_size, "1")
        m.addSeparator()
        self._action(m, "&Flagged only", self.gallery.toggle_flagged_only, "F", "Show only flagged images")
        self._action(m, "Sort by &score", lambda: self.gallery.set_sort_by_score(True), "S")
        self._action(m, "Sort by &name", lambda: self.gallery.set_sort_by_score(False), "N")
        m.addSeparator()
        self._action(m, "&Reset layout", lambda: self.restoreState(self._default_state, STATE_VERSION))

        m = mb.addMenu("&Review")
        self.review_actions = [
            self._action(m, "Verdict &OK", lambda: self.set_verdict("ok"), VERDICT_KEYS["ok"]),
            self._action(m, "Verdict &NG", lambda: self.set_verdict("ng"), VERDICT_KEYS["ng"]),
            self._action(m, "Verdict &unsure", lambda: self.set_verdict("unsure"), VERDICT_KEYS["unsure"]),
            self._action(m, "&Clear verdict", lambda: self.set_verdict(None), VERDICT_KEYS[None]),
        ]
        self._action(m, "&Note…", lambda: self.review.note.setFocus(), NOTE_KEY)
        m.addSeparator()
        self._action(m, "&To review", self.toggle_to_review, NEXT_KEY,
                     "Only the unreviewed images in the review band or flagged, highest score first")
        self._action(m, "This one is &normal", self.mark_normal)

        m = mb.addMenu("&Detector")
        self.detector_group = QActionGroup(self)
        for name in REGISTRY:
            act = QAction(f"{name} — {REGISTRY[name].title}", self, checkable=True)
            act.setData(name)
            act.setEnabled(REGISTRY[name].availability()[0])
            act.triggered.connect(lambda _c=False, n=name: self.detector_panel.select_detector(n))
            self.detector_group.addAction(act)
            m.addAction(act)
        m.addSeparator()
        self._action(m, "&Train", self.train, "Ctrl+T", "Train the detector on the good images")
        self._action(m, "&Run", self.run_detector, ["Ctrl+R", "F5"], "Score the open folder")
        self.cancel_action = self._action(m, "&Cancel", self.request_cancel, "Esc", "Stop the running task")
        m.addSeparator()
        self._action(m, "Reset &threshold", self.controller.reset_threshold)

        m = mb.addMenu("&Export")
        self.export_actions = {
            "flagged": self._action(m, "&Flagged list…", lambda: self.export("flagged"),
                                    tip="flagged.txt and flagged.csv (path, score)"),
            "heatmaps": self._action(m, "&Heat maps…", lambda: self.export("heatmaps"),
                                     tip="one PNG per image in the shared colormap"),
            "results": self._action(m, "Full &results…", lambda: self.export("results"),
                                    tip="results.csv, flagged.txt, skipped.csv and heat maps"),
        }
        self.report_action = self._action(m, "&Report (HTML)…", self.export_report,
                                          tip="One self-contained HTML file: counts, histogram, ROC of the "
                                              "verdicts, flagged and disagreeing images with notes")
        m.addSeparator()
        self.open_export_action = self._action(m, "&Open last export folder", self.open_export_folder)
        self.open_export_action.setEnabled(False)

        m = mb.addMenu("&Help")
        self._action(m, "&Keyboard shortcuts", self.show_shortcuts, "F1")
        self._action(m, "&About", self.about)
        self._sync_actions()


    def about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}",
                          f"<b>{APP_NAME}</b><p>Open a folder of part images, train or choose a detector, "
                          "and inspect anomaly heat maps, the score histogram and the flagged parts.</p>"
                          "<p>Keys: arrows / PageUp / PageDown move through the gallery; H toggles the heat "
                          "map, G the ground-truth outline; + / - zoom, 0 fits, 1 shows 1:1; F shows only flagged images; S / N sort by score / name; "
                          "Esc cancels the running task; A / D / U / C give the verdict OK / NG / unsure / none. "
                          "Help > Keyboard shortcuts (F1) lists every key.</p>")

    def show_shortcuts(self) -> QDialog:
        """Help > Keyboard shortcuts: every key of the window (not modal)."""
        dlg = QDialog(self)
        dlg.setWindowTitle("Keyboard shortcuts")
        rows = "".join(f"<tr><td style='padding-right:16px'><b>{k}</b></td><td>{what}</td></tr>"
                       for k, what in SHORTCUTS)
        label = QLabel(f"<table>{rows}</table>")
        label.setObjectName("shortcutsTable")
        lay = QVBoxLayout(dlg)
        lay.addWidget(label)
        dlg.show()
        self._shortcuts_dialog = dlg
        return dlg
