"""Hot model updates: `anogan-serve --models-dir DIR` serves every bundle in DIR and follows
its changes while serving.

Each subfolder holding a `manifest.json` is a model named after the folder. Every
`--models-poll` seconds the folder is read again: a model whose manifest changed (or a new
one) is loaded and verified on a worker thread, exactly as at start (schema, checksums,
shapes, ONNX-vs-torch parity, the cascade's exactness), while the old version serves; only
then does it take new calls. Streams already open finish on the version they started with
(each holds its model), so results change version only between streams, and every result
names its version. A folder that no longer has a manifest is removed: new calls for it get
NOT_FOUND, open streams finish (the default model too: calls naming no model get NOT_FOUND
until it is back). A version that fails verification is logged and not served (the version
before it keeps serving) until its manifest or its files change again. A folder named like
a `--bundle` model is refused. A replaced or removed version is stopped once its last
stream has ended.

Update a model by writing its new network files, then its manifest.json last (an atomic
rename): the manifest's checksums cover the files, so the change is picked up whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from anogan_inspect.server.models import EngineOptions, ServedModel, load_model

log = logging.getLogger(__name__)


def read_folder(directory: Path) -> dict[str, str]:
    """Model name → the sha256 of its manifest, for every subfolder holding one."""
    found = {}
    for folder in sorted(directory.iterdir()) if directory.is_dir() else []:
        manifest = folder / "manifest.json"
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                found[folder.name] = hashlib.sha256(manifest.read_bytes()).hexdigest()
            except OSError:  # no manifest (yet): not a model
                continue
    return found


def files_of(folder: Path) -> tuple:
    """What a version's folder holds now (names, sizes, modification times): a version that
    failed is tried again once this changes, e.g. when a copy that was half done finishes."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                            for p in folder.iterdir() if p.is_file()))
    except OSError:
        return ()


def load_folder(directory: Path, engine: EngineOptions) -> dict[str, ServedModel]:
    """At start: every model of the folder, loaded and verified (BundleError on the first
    that fails, as for --bundle), each with its manifest's fingerprint."""
    if not directory.is_dir():
        raise ValueError(f"--models-dir {directory} is not a folder")
    models = {}
    for name, fingerprint in read_folder(directory).items():
        models[name] = load_model(directory / name, engine, name)
        models[name].fingerprint = fingerprint
    return models


class ModelsWatcher:
    """Follows a models folder for a running service (see the module's docstring)."""

    def __init__(self, service, directory: Path, engine: EngineOptions, poll_seconds: float):
        self.service, self.directory, self.engine = service, directory, engine
        self.poll_seconds = poll_seconds
        # name → manifest fingerprint of what serves (or last failed) from the folder
        self.seen = {name: model.fingerprint for name, model in service.models.items()
                     if model.fingerprint}
        # --bundle models: a folder of the same name is refused (as at start), never swapped in
        self.fixed = {name for name, model in service.models.items() if not model.fingerprint}
        self.failed: dict[str, str] = {}  # name → the error of its last rejected version
        self.failed_files: dict[str, tuple] = {}  # name → its folder's files when it failed
        self.retiring: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> ModelsWatcher:
        self._task = asyncio.create_task(self._run())
        return self

    def stop_watching(self) -> None:
        """No more updates (a drain: the versions serving now see it through)."""
        if self._task:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop watching, and stop the replaced versions still waiting for their streams:
        only once no call is left (the end of a drain), or their frames would fail."""
        self.stop_watching()
        for task in list(self.retiring):
            task.cancel()
        await asyncio.gather(*self.retiring, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.update()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad folder
                log.exception("reading the models folder %s failed", self.directory)

    async def update(self) -> None:
        """One pass: load what is new or changed, remove what is gone."""
        found = await asyncio.to_thread(read_folder, self.directory)
        for name, fingerprint in found.items():
            folder = self.directory / name
            if self.seen.get(name) == fingerprint and name not in self.failed:
                continue
            files = await asyncio.to_thread(files_of, folder)  # as loaded
            if self.seen.get(name) == fingerprint and self.failed_files[name] == files:
                continue  # a failed version is tried again only when its files change (a
                # copy that was half done, say)
            self.seen[name] = fingerprint
            try:
                if name in self.fixed:
                    raise ValueError(f"--bundle serves a model named {name!r} already")
                model = await asyncio.to_thread(load_model, folder, self.engine, name)
            except Exception as err:  # noqa: BLE001 - any failure keeps the old version
                self.failed[name], self.failed_files[name] = str(err), files
                log.error("model %s: the new version in %s is not served (%s); %s", name,
                          folder, err,
                          "the version before it still serves" if name in self.service.models
                          else "nothing is served under this name")
                continue
            self.failed.pop(name, None)
            self.failed_files.pop(name, None)
            model.fingerprint = fingerprint
            self._swap(name, model.start())
        for name in [n for n in self.seen if n not in found]:
            del self.seen[name]
            self.failed.pop(name, None)
            self.failed_files.pop(name, None)
            if name in self.service.models and name not in self.fixed:
                self._swap(name, None)

    def _swap(self, name: str, model: ServedModel | None) -> None:
        """Serve `model` under `name` from the next call on (None: remove the name)."""
        models = self.service.models
        old = models.pop(name, None)
        if model is not None:
            models[name] = model
            self.service.invalid_frames.setdefault(name, 0)
            log.info("model %s: now serving version %s%s", name, model.bundle.version,
                     f" (was {old.bundle.version})" if old else "")
        else:
            log.info("model %s: removed (version %s)", name, old.bundle.version)
        # The default model keeps its name: calls that name no model get NOT_FOUND while it
        # is gone, never another model's verdicts.
        if old is not None:
            self.service.retired.add(old)  # still counted (metrics) while streams hold it
            task = asyncio.create_task(self._retire(old))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)

    async def _retire(self, model: ServedModel) -> None:
        """Stop a replaced version once no stream holds it."""
        try:
            while model.streams:
                await asyncio.sleep(0.1)
        finally:
            self.service.retired.discard(model)
            await asyncio.to_thread(model.stop)
            log.info("model %s: version %s stopped", model.name, model.bundle.version)
