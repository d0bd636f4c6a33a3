"""Bundle versions in a served models folder: promote one, roll back to its parent.

`anogan-serve --models-dir MODELS` serves MODELS/<name>/ and follows its changes (a new
manifest is loaded and verified beside the version serving, then takes new calls; open
streams finish on theirs: server/models_dir.py). Promoting a version writes its files into
MODELS/<name>/ and its manifest last, so the server picks it up whole, without a restart
and without losing a frame. Every version that served there is kept, immutable, under
MODELS/.versions/<name>/<version>/ (a dot folder the server does not serve), so rolling
back is promoting the parent the current version's `lineage` names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from anogan_inspect.bundle import MANIFEST, BundleError, read_bundle, verify_checksums

VERSIONS = ".versions"


def archive_of(served: Path) -> Path:
    """Where the versions of the model served from `served` are kept."""
    return served.parent / VERSIONS / served.name


def keep(bundle_path: Path, archive: Path) -> Path:
    """The version at bundle_path, copied (once) to archive/<version>/."""
    bundle = read_bundle(bundle_path)
    kept = archive / bundle.version
    if not (kept / MANIFEST).exists():
        tmp = archive / f".{bundle.version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(bundle_path, tmp)
        tmp.rename(kept)
    return kept


def promote(version: Path, served: Path) -> tuple[str | None, str]:
    """Serve `version` (a bundle folder) from `served`: the version serving now and this
    one kept under the archive, this one's files written into `served`, its manifest
    last. Returns (the version replaced or None, the version now served)."""
    bundle = read_bundle(version)
    verify_checksums(bundle)  # a damaged version never reaches the server
    archive = archive_of(served)
    replaced = None
    if (served / MANIFEST).exists():
        replaced = read_bundle(served).version
        keep(served, archive)
    keep(version, archive)
    served.mkdir(parents=True, exist_ok=True)
    for name in bundle.manifest["files"]:
        tmp = served / f".{name}.tmp"
        shutil.copy2(bundle.path / name, tmp)
        os.replace(tmp, served / name)
    tmp = served / f".{MANIFEST}.tmp"
    shutil.copy2(bundle.path / MANIFEST, tmp)
    os.replace(tmp, served / MANIFEST)  # the change the server picks up, whole
    for stale in served.iterdir():  # files only the replaced version had
        if stale.is_file() and stale.name != MANIFEST and \
                stale.name not in bundle.manifest["files"]:
            stale.unlink()
    return replaced, bundle.version


def rollback(served: Path) -> tuple[str, str]:
    """Serve again the parent of the version served from `served` (its `lineage`)."""
    current = read_bundle(served)
    lineage = current.manifest.get("lineage")
    if not lineage:
        raise BundleError(f"{served}: version {current.version} has no parent to roll back "
                          "to (it was trained, not learnt)")
    parent = archive_of(served) / lineage["parent"]["version"]
    if not (parent / MANIFEST).exists():
        raise BundleError(f"{served}: its parent version {lineage['parent']['version']} is "
                          f"not kept in {parent.parent}")
    replaced, now = promote(parent, served)
    return replaced or current.version, now
