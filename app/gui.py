"""Starting the window: ``run_gui`` sets up Qt, the style and the optional autopilot
(open a folder, train if needed, scan, screenshot) used by the CLI and for documentation."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, QSettings, QTimer
from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

from app.main_window import APP_NAME, MainWindow
from core.detectors.registry import REGISTRY

STYLE_SHEET = Path(__file__).resolve().parent.parent / "resources" / "style.qss"


def apply_style(app: QApplication) -> None:
    """Fusion with a dark palette (images read better on dark grey) and the shipped style sheet."""
    app.setStyle("Fusion")
    pal = QPalette()
    for role, color in ((QPalette.Window, "#232428"), (QPalette.WindowText, "#dcdfe4"), (QPalette.Base, "#1b1c1f"),
                        (QPalette.AlternateBase, "#26282c"), (QPalette.Text, "#dcdfe4"), (QPalette.Button, "#2d2f34"),
                        (QPalette.ButtonText, "#dcdfe4"), (QPalette.Highlight, "#3d8bfd"),
                        (QPalette.HighlightedText, "#ffffff"), (QPalette.ToolTipBase, "#2d2f34"),
                        (QPalette.ToolTipText, "#e8eaed"), (QPalette.PlaceholderText, "#80868b"),
                        (QPalette.Link, "#7ab7ff")):
        pal.setColor(role, QColor(color))
    for role in (QPalette.WindowText, QPalette.Text, QPalette.ButtonText):
        pal.setColor(QPalette.Disabled, role, QColor("#6b7077"))
    app.setPalette(pal)
    font = QFont(app.font())
    font.setPointSizeF(max(font.pointSizeF(), 10.0))
    app.setFont(font)
    if STYLE_SHEET.is_file():
        app.setStyleSheet(STYLE_SHEET.read_text(encoding="utf-8"))


class Autopilot(QObject):
    """After the folder is open: run the detector (training first if needed); then, for a
    screenshot, select the most anomalous image, wait for its pixels, grab the window, quit."""

    def __init__(self, window: MainWindow, autorun: bool, screenshot: Optional[str]) -> None:
        super().__init__(window)
        self.window, self.autorun, self.screenshot = window, autorun, screenshot
        self.exit_code: Optional[int] = None
        self._started = False
        self._polls = 0
        c = window.controller
        c.folder_opened.connect(self._folder_opened)
        c.busy_changed.connect(self._busy_changed)
        c.logged.connect(self._logged)
        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)

    def _folder_opened(self, _info) -> None:
        if self.autorun and not self._started:
            self._started = True
            if not self.window.run_detector():
                self._finish(1)
        elif not self.autorun and self.screenshot:
            self._timer.start()

    def _busy_changed(self, title: str) -> None:
        if title or not self._started or self.exit_code is not None:
            return
        c = self.window.controller
        if c.result is None:
            self._finish(1)
            return
        if self.screenshot:
            rows = c.result.rows
            self.window.gallery.set_sort_by_score(True)
            if rows:
                self.window.gallery.select_path(max(rows, key=lambda r: r.score).path)
            self._timer.start()

    def _logged(self, level: str, message: str) -> None:
        if level == "error" and self.screenshot and self.exit_code is None and not self.window.controller.busy:
            self._finish(1)  # e.g. the folder could not be opened, or the detector cannot run

    def _poll(self) -> None:
        c, view = self.window.controller, self.window.image_view
        self._polls += 1
        pixels_shown = view.path is None or view.image_item.isVisible() or bool(view.message.toPlainText())
        waiting = c.helper_running("thumbnails") or c.helper_running("image") or c.helper_running("range")
        if (pixels_shown and not waiting) or self._polls > 600:
            self._timer.stop()
            QTimer.singleShot(400, lambda: self._finish(0))  # let pyqtgraph repaint once more

    def _finish(self, code: int) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = code
        if self.screenshot and code == 0:
            out = Path(self.screenshot)
            out.parent.mkdir(parents=True, exist_ok=True)
            ok = self.window.grab().save(str(out))
            print(f"screenshot {'written to' if ok else 'could not be written to'} {out}", file=sys.stderr)
            code = 0 if ok else 1
            self.exit_code = code
        if self.screenshot:
            self.window.close()
            QApplication.instance().exit(code)


def run_gui(folder: str | None = None, good: str | None = None, detector: str | None = None,
            autorun: bool = False, screenshot: str | None = None) -> int:
    """Show the main window; with ``autorun`` train (if needed) and scan ``folder``; with
    ``screenshot`` write a PNG of the window once the scan is shown and quit (exit 1 if a job failed)."""
    if detector and detector not in REGISTRY and (autorun or screenshot):
        print(f"unknown detector '{detector}' (known: {', '.join(REGISTRY)})", file=sys.stderr)
        return 1  # nothing to run: no window waiting for a scan that never comes
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName("AnomalyInspector")
    apply_style(app)
    quit_on_close = app.quitOnLastWindowClosed()
    try:
        return _show(app, folder, good, detector, autorun, screenshot)
    finally:
        app.setQuitOnLastWindowClosed(quit_on_close)


def _show(app: QApplication, folder: str | None, good: str | None, detector: str | None, autorun: bool,
          screenshot: str | None) -> int:
    if not screenshot:
        return _run_window(app, MainWindow(), folder, good, detector, autorun, None)
    # A documentation shot: the default layout, the user's settings left alone, and the
    # autopilot's exit code (closing the window must not post a second quit).
    app.setQuitOnLastWindowClosed(False)
    with tempfile.TemporaryDirectory(prefix="anomaly-inspector-") as scratch:
        settings = QSettings(str(Path(scratch) / "settings.ini"), QSettings.IniFormat)
        return _run_window(app, MainWindow(settings=settings), folder, good, detector, autorun, screenshot)


def _run_window(app: QApplication, window: MainWindow, folder: str | None, good: str | None,
                detector: str | None, autorun: bool, screenshot: str | None) -> int:
    window.show()
    pilot = Autopilot(window, autorun, screenshot) if (autorun or screenshot) else None
    if detector:
        if detector in REGISTRY:
            window.select_detector(detector)
        else:
            window.controller.log("error", f"Unknown detector '{detector}' (known: {', '.join(REGISTRY)})")
    if good:
        window.set_good_folder(good)
    if folder:
        window.open_folder(folder)
    elif not screenshot and not autorun:
        QTimer.singleShot(0, window.offer_last_session)  # starting the app offers the last session
    elif screenshot:
        QTimer.singleShot(0, lambda: pilot._finish(0 if not autorun else 1))
    code = app.exec()
    return pilot.exit_code if pilot is not None and pilot.exit_code is not None else code
