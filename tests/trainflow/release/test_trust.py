"""Trust no one who can write the store: packages signed in the OpenSSF model signing format with
real elliptic-curve keys, refused when forged even with their manifest and the registry's record
rewritten; a registry that refuses links and renamed copies and creates nothing where it is not."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.registry_helpers import make_package, package_sources, sample_metadata
from trainflow.app.cli import main as cli
from trainflow.core.config import PublishConfig, RegistryConfig
from trainflow.core.errors import PackageVerificationError, PublishError, RegistryError
from trainflow.core.layout import MANIFEST, REGISTRY_DIR, REGISTRY_STATE, SIGNATURE
from trainflow.package import load
from trainflow.release.package import verify_package
from trainflow.release.publish import publish_package
from trainflow.release.registry import promote, register
from trainflow.release.registry import verify as verify_registered
from trainflow.release.signing import signing_key_problem, verify_signature

POLICY = RegistryConfig(max_regression=1.0)


@pytest.fixture
def src(tmp_path: Path, tiny_onnx: Path) -> Path:
    return package_sources(tmp_path, tiny_onnx)


def _keys(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return priv, pub


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    (priv, pub), (other, other_pub) = _keys(folder, "publisher"), _keys(folder, "attacker")
    return {"priv": priv, "pub": pub, "other": other, "other_pub": other_pub}


def _signed(root: Path, src: Path, version: str, key: Path) -> Path:
    meta = sample_metadata(version, test={"accuracy": 0.8}, int8={"accuracy": 0.8})
    return Path(publish_package(artifact_root=root, sources=[src], metadata=meta, signing_key=key).path)


def _reseal(pkg: Path, root: Path) -> None:
    """What an attacker who can write the store does after changing files: a new SHA256SUMS and
    the registry's recorded digests rewritten to match."""
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(pkg.iterdir())
               if p.name not in (MANIFEST, SIGNATURE)}  # fmt: skip
    manifest = "".join(f"{d}  {n}\n" for n, d in digests.items()).encode()
    (pkg / MANIFEST).write_bytes(manifest)
    state_path = root / REGISTRY_DIR / REGISTRY_STATE
    state = json.loads(state_path.read_text())
    entry = state["models"][pkg.parent.name]["versions"][pkg.name]
    entry.update(files=digests, manifest_sha256=hashlib.sha256(manifest).hexdigest())
    sig = pkg / SIGNATURE
    entry["signature_sha256"] = hashlib.sha256(sig.read_bytes()).hexdigest() if sig.is_file() else None
    state_path.write_text(json.dumps(state))


def test_a_signed_package_verifies_with_trainflow_and_with_model_signings_own_verifier(
    tmp_path: Path, src: Path, keys: dict[str, Path], capsys
) -> None:
    root = tmp_path / "art"
    pkg = _signed(root, src, "v1", keys["priv"])
    assert (pkg / SIGNATURE).is_file() and SIGNATURE not in (pkg / MANIFEST).read_text()
    verify_registered(artifact_root=root, model_name="m", version="v1", public_key=keys["pub"])
    assert cli(["verify", "v1", "--artifact-root", str(root), "--public-key", str(keys["pub"])]) == 0
    assert f"signature verified with {keys['pub']}" in capsys.readouterr().out
    assert cli(["verify", str(pkg)]) == 0 and "signed (pass --public-key" in capsys.readouterr().out
    # Interoperability: the OpenSSF library's own verifier, as a user would run it.
    from model_signing import verifying

    verifying.Config().use_elliptic_key_verifier(public_key=keys["pub"]).verify(pkg, pkg / SIGNATURE)
    done = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(pkg / SIGNATURE),
                           "--public_key", str(keys["pub"]), str(pkg)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # The private key itself is nowhere in what was written.
    secret = keys["priv"].read_bytes()
    body = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    assert secret not in body and b"PRIVATE KEY" not in body


def test_the_full_forgery_is_refused_once_a_key_is_given(tmp_path: Path, src: Path, keys: dict[str, Path]) -> None:
    root = tmp_path / "art"
    pkg = _signed(root, src, "v1", keys["priv"])
    data = bytearray((pkg / "model_int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # a changed model...
    (pkg / "model_int8.onnx").write_bytes(bytes(data))
    _reseal(pkg, root)  # ...with its manifest and the registry's record rewritten
    verify_registered(artifact_root=root, model_name="m", version="v1")  # without a key nothing can tell
    with pytest.raises(
        PackageVerificationError, match="files changed since they were signed: SHA256SUMS, model_int8.onnx"
    ):
        verify_registered(artifact_root=root, model_name="m", version="v1", public_key=keys["pub"])
    with pytest.raises(PackageVerificationError, match="refusing to promote m v1: .*model_int8.onnx"):
        promote(artifact_root=root, version="v1", policy=POLICY, public_key=keys["pub"])
    policy = RegistryConfig(max_regression=1.0, public_key=str(keys["pub"]))
    with pytest.raises(PackageVerificationError, match="model_int8.onnx"):
        promote(artifact_root=root, version="v1", policy=policy)
    with pytest.raises(PackageVerificationError, match="model_int8.onnx"):
        load(pkg, public_key=keys["pub"])
    # Re-signed with the attacker's own key: still not the publisher's.
    from trainflow.release.signing import sign_package

    sign_package(pkg, keys["other"])
    _reseal(pkg, root)
    with pytest.raises(PackageVerificationError, match="signed with another key"):
        verify_registered(artifact_root=root, model_name="m", version="v1", public_key=keys["pub"])
    assert cli(["verify", str(pkg), "--public-key", str(keys["pub"])]) == 1


def test_an_unsigned_package_is_refused_when_a_key_is_given_and_reported_without(
    tmp_path: Path, src: Path, keys: dict[str, Path], capsys
) -> None:
    root = tmp_path / "art"
    pkg = Path(make_package(root, src, "v1").path)
    assert cli(["verify", "v1", "--artifact-root", str(root)]) == 0 and "unsigned" in capsys.readouterr().out
    for attempt in (
        lambda: verify_registered(artifact_root=root, model_name="m", version="v1", public_key=keys["pub"]),
        lambda: promote(artifact_root=root, version="v1", policy=POLICY, public_key=keys["pub"]),
        lambda: load(pkg, public_key=keys["pub"]),
    ):
        with pytest.raises(PackageVerificationError, match="unsigned"):
            attempt()
    outside = tmp_path / "copy" / "m" / "v1"
    shutil.copytree(pkg, outside)
    with pytest.raises(PackageVerificationError, match="unsigned"):
        verify_signature(outside, keys["pub"])


def test_a_removed_or_swapped_signature_differs_from_the_registrys_record(
    tmp_path: Path, src: Path, keys: dict[str, Path]
) -> None:
    root = tmp_path / "art"
    pkg = _signed(root, src, "v1", keys["priv"])
    (pkg / SIGNATURE).unlink()
    with pytest.raises(PackageVerificationError, match=f"{SIGNATURE}: missing or differs"):
        verify_registered(artifact_root=root, model_name="m", version="v1")


def test_the_signing_key_must_be_an_ec_key_outside_the_artifact_root(tmp_path: Path, keys: dict[str, Path]) -> None:
    art = tmp_path / "art"
    inside = art / "key.pem"
    inside.parent.mkdir()
    shutil.copy(keys["priv"], inside)
    with pytest.raises(ValueError, match="lies inside publish.artifact_root"):
        PublishConfig(artifact_root=str(art), signing_key=str(inside))
    os.environ["TF_TEST_KEY"] = str(inside)
    try:
        assert "inside the artifact root" in (signing_key_problem("${TF_TEST_KEY}", art) or "")
    finally:
        del os.environ["TF_TEST_KEY"]
    assert "not an unencrypted PEM private key" in (signing_key_problem(str(keys["pub"]), art) or "")
    assert signing_key_problem(str(keys["priv"]), art) is None
    with pytest.raises(PublishError, match="does not exist"):
        from trainflow.release.signing import key_path

        key_path(str(tmp_path / "nope.pem"), "signing key")


def test_a_symlinked_version_folder_is_refused_everywhere(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    make_package(root, src, "v1")
    forged = tmp_path / "elsewhere" / "v2"
    shutil.copytree(root / "m" / "v1", forged)
    (root / "m" / "v2").symlink_to(forged, target_is_directory=True)
    with pytest.raises(PackageVerificationError, match="is a symbolic link"):
        register(artifact_root=root, model_name="m", version="v2")
    with pytest.raises(PackageVerificationError, match="symbolic link|unregistered"):
        promote(artifact_root=root, version="v2", policy=POLICY)
    with pytest.raises(PackageVerificationError, match="symbolic link"):
        verify_registered(artifact_root=root, model_name="m", version="v2")
    with pytest.raises(PackageVerificationError, match="symbolic link"):
        load(root / "m" / "v2")
    assert cli(["verify", str(root / "m" / "v2")]) == 1


def test_register_refuses_a_copy_whose_metadata_names_another_version(tmp_path: Path, src: Path) -> None:
    root = tmp_path / "art"
    make_package(root, src, "v1")
    shutil.copytree(root / "m" / "v1", root / "m" / "v9")  # self-consistent, but it is v1
    with pytest.raises(PackageVerificationError, match="its metadata.json names m v1, not m v9"):
        register(artifact_root=root, model_name="m", version="v9")


def test_commands_on_a_root_without_a_registry_create_nothing(tmp_path: Path, capsys) -> None:
    mistyped = tmp_path / "artifcats"
    mistyped.mkdir()
    for command in (["rollback"], ["verify", "v1"], ["promote", "v1"]):
        assert cli([*command, "--artifact-root", str(mistyped)]) == 1
        assert f"no registry at {mistyped} (is --artifact-root right?)" in capsys.readouterr().err
    assert list(mistyped.iterdir()) == [], "nothing was created"
    with pytest.raises(RegistryError, match="no registry at"):
        verify_registered(artifact_root=mistyped, model_name="m", version="v1")
    assert verify_package  # the format check needs no registry (a folder elsewhere is checked alone)


def test_every_changed_added_and_removed_file_is_named_whatever_quoting_the_digests_force() -> None:
    from trainflow.release.signing import _reason

    # model_signing's message is the repr of a list of lines; a digest whose bytes hold a double
    # quote makes Python escape that line's single quotes.
    quoted = "Hash mismatch for 'SHA256SUMS': Expected 'Digest(digest_value=b'\"x')', Actual 'y'"
    plain = "Hash mismatch for 'model_int8.onnx': Expected 'a', Actual 'b'"
    extra = "Extra files found in model 'v1': evil.py, notes.txt"
    missing = "Missing files in model 'v1': model_card.md"
    err = ValueError(f"Signature mismatch: {[quoted, plain, extra, missing]}")
    assert "\\'SHA256SUMS\\'" in str(err)  # the escaped spelling is really produced
    assert _reason(err) == (
        "files changed since they were signed: SHA256SUMS, model_int8.onnx; files added since it was signed:"
        " evil.py, notes.txt; files removed since it was signed: model_card.md"
    )
