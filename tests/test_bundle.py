"""Model bundles: round trip, and tampering refused before anything is parsed."""
import io
import json
import shutil

import numpy as np
import pytest

from classifier.bundle import BundleError, load_bundle, save_bundle, sha256_bytes


@pytest.fixture
def bundle_dir(fitted_bundle, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(fitted_bundle, d)
    return d


def test_round_trip_scores_identically(fitted_bundle, small_features, tmp_path):
    feats, _ = small_features
    a = load_bundle(fitted_bundle)
    save_bundle(a, tmp_path / "again")
    b = load_bundle(tmp_path / "again")
    assert a.version == b.version == "test-1"
    assert a.solo_thresholds == b.solo_thresholds and a.specificity == b.specificity
    np.testing.assert_allclose(a.model.decision_function(feats[:30]), b.model.decision_function(feats[:30]))
    assert (tmp_path / "again" / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_manifest_lists_every_file_with_its_hash(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    on_disk = {p.name for p in bundle_dir.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        data = (bundle_dir / name).read_bytes()
        assert entry == {"sha256": sha256_bytes(data), "bytes": len(data)}


@pytest.mark.parametrize("victim", ["global_tokens.npz", "crm114.npz", "content_spam.npz", "bundle.json"])
def test_a_changed_byte_is_refused(bundle_dir, victim):
    path = bundle_dir / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{victim}: SHA-256 .* does not match the manifest"):
        load_bundle(bundle_dir)


def test_a_swapped_file_with_its_hash_edited_in_is_caught_by_a_pinned_manifest(bundle_dir, fitted_bundle):
    pinned = load_bundle(fitted_bundle).manifest_sha256
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    evil = (bundle_dir / "content_spam.npz").read_bytes()[:-1] + b"\x00"
    (bundle_dir / "content_spam.npz").write_bytes(evil)
    manifest["files"]["content_spam.npz"]["sha256"] = sha256_bytes(evil)
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="is not the pinned"):
        load_bundle(bundle_dir, expected_manifest_sha256=pinned)


def test_a_file_missing_from_the_manifest_is_refused(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    del manifest["files"]["crm114.npz"]
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not vouch for crm114.npz"):
        load_bundle(bundle_dir)


def test_manifest_cannot_point_outside_the_bundle(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"]["../bundle.json"] = manifest["files"].pop("bundle.json")
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        load_bundle(bundle_dir)


def test_missing_manifest_and_other_formats(bundle_dir, tmp_path):
    with pytest.raises(BundleError, match="no readable manifest.json"):
        load_bundle(tmp_path)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["format"] = 99
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 99"):
        load_bundle(bundle_dir)


def test_pickled_arrays_are_never_loaded(bundle_dir):
    """Even a file the manifest vouches for cannot smuggle a pickle in: arrays are
    read with allow_pickle=False."""
    buf = io.BytesIO()
    np.savez(buf, index=np.array([object()], dtype=object))
    evil = buf.getvalue()
    (bundle_dir / "content_spam.npz").write_bytes(evil)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"]["content_spam.npz"] = {"sha256": sha256_bytes(evil), "bytes": len(evil)}
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_bundle(bundle_dir)
