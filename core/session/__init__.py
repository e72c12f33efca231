"""Inspection sessions: an inspection's runs and the inspector's decisions, kept in one SQLite file.

A session belongs to one inspected folder. By default it lives in the app's data folder, keyed
by the folder's path (:func:`default_session_path`; never inside the inspected folder, which
may be read-only or on a share); ``--session FILE`` or a "Save session as…" puts it anywhere.
Plain Python, no Qt: the GUI and the CLI use the same API.

The file (``sqlite3``, WAL mode, schema version and migrations in :mod:`.schema`) holds

* the images: path, size, modification time, content hash (SHA-256);
* the runs: detector, model fingerprint (a checksum of the weights), settings, threshold and
  its calibration, app version, user, time, and how many images were new or reused;
* per run and image: score, flagged, group, detector columns, and the anomaly map (lossless
  float16, compressed; or 8-bit PNG, 6x smaller, chosen when a session is created: :mod:`.maps`);
* the inspector's decisions, each with the OS user and the time: verdicts (ok / ng /
  unsure), notes, hand moves between groups, threshold changes and a review band, the
  session's good set ("this one is normal"), and front-end state to restore.

Every decision is its own committed transaction: a process killed in the middle of a review
loses nothing already decided. A run is written in short transactions and counts only once
complete, so a front end may record a run from its worker thread while the inspector goes on
deciding (one ``Session`` may be shared by threads: its transactions take turns). One process
writes at a time (an OS lock beside the file, :mod:`.lock`); a second one gets
:class:`SessionLockedError` naming the holder, or opens the session read-only.

The API, as a front end uses it
-------------------------------

Open and close::

    from core.session import default_session_path, open_session
    s = open_session(default_session_path(folder), folder=folder, mode="auto")
    s.read_only, s.read_only_reason     # True and "open for writing by ann on qa-3 ..." when locked
    ...
    s.close()                           # or ``with open_session(...) as s:``

Runs (the scan itself is :func:`core.engine.session_scan.scan_into_session`, which scores only
new or changed images and reuses the rest: ``outcome.describe()`` says "12 new, 83 reused")::

    s.runs()                    # [RunInfo], oldest first; s.run() is the latest, s.run(3) a given one
    result = s.load_run()       # ScanResult of the latest run, current threshold and group moves applied
    m = s.load_map(path)        # one image's anomaly map (float16), loaded when it is shown

Review (each call commits at once)::

    s.set_verdict(path, "ng")   # "ok" | "ng" | "unsure" | None (clear); s.verdicts() -> {path: Decision}
    s.set_note(path, "scratch on the neck")                 # s.notes()
    s.set_review_band(run_id, low, high)                    # s.review_band(run_id) -> ReviewBand.zone(score)
    s.set_threshold(run_id, 0.42)                           # s.threshold_value(run_id), s.threshold_history(run_id)
    s.review_queue(run_id)      # unreviewed images in the band or flagged, highest score first
    s.review_counts(run_id)     # every count: .describe() -> "reviewed 40 / 83, 3 disagree", .n_flagged,
                                # .zones (per zone of the band), .disagreeing (the ≠ marks), .queue
    disagrees(verdict, flagged) # whether to mark a verdict that contradicts the flag

Every count comes from one function, :func:`core.results.review.review_counts` (rows, threshold,
band, verdicts): the window, the report and the export call it, so they agree.

Models: a front end keeps the model it scored with beside the session
(:func:`core.engine.session_model.keep_model` saves it in ``s.models_dir()`` and records it:
``s.model(run.fingerprint)`` is the run's model, with its weights' checksum), and the folder of
good images (``s.set_good_folder(path)`` / ``s.good_folder()``), so reopening a folder restores both.

Groups of a zero-shot run: ``s.move_to_group(path, "suspect")`` (``None`` undoes it);
``s.apply_decisions(result, run_id)`` lays the moves over any grouping, so they survive a
regroup, a rerun and a restart.

"This one is normal": ``s.mark_normal(path)`` adds the image to the session's good set
(``s.good_set()``); ``s.recalibrate_with_good_set(run_id)`` re-calibrates the run's threshold
on its held-out normal scores plus the good set's scores (no re-scoring) and records it as a
threshold change. Refitting a cheap detector on the good set is the engine's
(:func:`core.engine.workflows.train_detector` on those files).

Restore on reopen: ``s.set_ui_state("sort", ...)`` / ``s.ui_state()`` for sort, filter,
selection, detector; with ``load_run``, ``verdicts``, ``notes`` and ``review_band`` that is the
whole picture.

Reports: :func:`core.session.report.write_report` (one self-contained HTML file) and
:func:`core.session.export.export_session` (results.csv with provenance and a ``verdict``
column, flagged list, heat maps).
"""

from core.results.review import ReviewCounts, disagrees, review_counts
from core.session.lock import SessionLockedError
from core.session.schema import SchemaError
from core.session.store import (
    VERDICTS,
    Decision,
    ImageRecord,
    ModelRecord,
    ReviewBand,
    ReviewStatus,
    RunInfo,
    Session,
    SessionError,
    SessionReadOnlyError,
    StoredScore,
    default_session_path,
    open_session,
)

__all__ = [
    "VERDICTS",
    "Decision",
    "ImageRecord",
    "ModelRecord",
    "ReviewBand",
    "ReviewCounts",
    "ReviewStatus",
    "RunInfo",
    "SchemaError",
    "Session",
    "SessionError",
    "SessionLockedError",
    "SessionReadOnlyError",
    "StoredScore",
    "default_session_path",
    "disagrees",
    "open_session",
    "review_counts",
]
