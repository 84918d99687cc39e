"""Package signatures in the OpenSSF model signing format (`model_signing`, key-based, offline).

A signed package holds `model.sig`: a Sigstore bundle whose DSSE envelope carries an in-toto
statement listing the SHA-256 of every other file of the package (SHA256SUMS included) and the
signature over it, made with the publisher's elliptic-curve private key. `model_signing`'s own
verifier (`python -m model_signing verify key ...`) checks it with the public key; so do
`trainflow verify --public-key`, `trainflow promote --public-key` and
`trainflow.package.load(..., public_key=...)`. Whoever can write the artifact store can rewrite
files, manifest and registry together; without the private key they cannot make a signature the
public key accepts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from trainflow.core.config import expand_env
from trainflow.core.errors import PackageVerificationError, PublishError
from trainflow.core.layout import SIGNATURE

Status = Literal["unsigned", "signed"]


def _hashing():  # type: ignore[no-untyped-def]
    from model_signing import hashing

    # Every file but the signature itself; nothing else is ignored (a package has no git files).
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def key_path(value: str, what: str) -> Path:
    """The key file a config or command names (`${VAR}` expanded). Raises PublishError (for the
    signing key) or PackageVerificationError (for a public key) naming the problem."""
    error = PublishError if what == "signing key" else PackageVerificationError
    try:
        path = Path(expand_env(value)).expanduser()
    except KeyError as err:
        raise error(f"{what}: {err.args[0]}") from None
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    return path


def sign_package(folder: Path, private_key: Path) -> Path:
    """Write `folder/model.sig` over every other file of `folder`.

    Raises:
        PublishError: the key is not a PEM elliptic-curve private key (or needs a password).
    """
    from model_signing import signing

    try:
        config = signing.Config().use_elliptic_key_signer(private_key=private_key)
    except (ValueError, TypeError) as err:
        raise PublishError(
            f"publish.signing_key {private_key}: not an unencrypted PEM elliptic-curve private key ({err}); make one"
            " with `openssl ecparam -genkey -name prime256v1 -noout -out key.pem`"
        ) from None
    config.set_hashing_config(_hashing()).sign(folder, folder / SIGNATURE)
    return folder / SIGNATURE


def signature_status(folder: Path) -> Status:
    return "signed" if (Path(folder) / SIGNATURE).is_file() else "unsigned"


def verify_signature(folder: Path, public_key: Path) -> None:
    """Check `folder/model.sig` with `public_key` over every other file of the package.

    Raises:
        PackageVerificationError: no signature, a signature by another key, or a file that
            differs from what was signed (each named in one line).
    """
    from model_signing import verifying

    folder = Path(folder)
    if not (folder / SIGNATURE).is_file():
        raise PackageVerificationError(
            f"{folder} is unsigned (no {SIGNATURE}) but a signature verified by {public_key} is required"
        )
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    except (ValueError, TypeError) as err:
        raise PackageVerificationError(
            f"public key {public_key}: not a PEM elliptic-curve public key ({err})"
        ) from None
    try:
        config.set_hashing_config(_hashing()).verify(folder, folder / SIGNATURE)
    except Exception as err:  # noqa: BLE001 - model_signing raises ValueError and cryptography's errors alike
        raise PackageVerificationError(
            f"{folder}: {SIGNATURE} does not verify with public key {public_key}: {_reason(err)}"
        ) from None


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    # model_signing reports a list repr of lines; a line whose digest bytes hold a double quote
    # comes back with its single quotes escaped (\'name\'), so both spellings are read.
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)
    extra = re.findall(r"Extra files found in model \\?'[^']*\\?': ([^\"'\]]+)", text)
    missing = re.findall(r"Missing files in model \\?'[^']*\\?': ([^\"'\]]+)", text)
    parts = []
    if changed:
        parts.append("files changed since they were signed: " + ", ".join(sorted(set(changed))))
    if extra:
        parts.append("files added since it was signed: " + ", ".join(n.strip().rstrip("\\") for n in extra))
    if missing:
        parts.append("files removed since it was signed: " + ", ".join(n.strip().rstrip("\\") for n in missing))
    if parts:
        return "; ".join(parts)
    if "Key mismatch" in text:
        return "it was signed with another key"
    return (text or type(err).__name__)[:300]


def signing_key_problem(value: str, artifact_root: Path) -> str | None:
    """Why `publish.signing_key` cannot sign (checked before a run trains), or None."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        path = key_path(value, "signing key")
    except PublishError as err:
        return f"publish.signing_key: {err}"
    if path.resolve().is_relative_to(Path(artifact_root).resolve()):
        return (f"publish.signing_key: {path} lies inside the artifact root {artifact_root}, where anyone who can write"
                " the packages could read or replace it; keep the key outside it")  # fmt: skip
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        return f"publish.signing_key: {path} is not an unencrypted PEM private key ({' '.join(str(err).split())[:120]})"
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return f"publish.signing_key: {path} is a {type(key).__name__.lstrip('_')}, not an elliptic-curve key"
    return None
