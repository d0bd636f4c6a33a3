"""Hot model updates: `anogan-serve --models-dir DIR` serves every bundle in DIR and follows
its changes while serving.

Each subfolder holding a `manifest.json` is a model named after the folder. Every
`--models-poll` seconds the folder is read again: a model whose manifest changed (or a new
one) is loaded and verified on a worker thread, exactly as at start (schema, checksums,
shapes, ONNX-vs-torch parity, the cascade's exactness), while the old version serves; only
then does it take new calls. Streams already open finish on the version they started with
(each holds its model), so results change version only between streams, and every result
names its version. A folder that no longer has a manifest is removed: new calls for it get
NOT_FOUND, open streams finish. A version that fails verification is logged and not served
(the version before it keeps serving) until its manifest changes again. A replaced or
removed version is stopped once its last stream has ended.

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
        self.failed: dict[str, str] = {}  # name → the error of its last rejected version
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
            if self.seen.get(name) == fingerprint:
                continue
            self.seen[name] = fingerprint  # a failed version is not tried again unchanged
            try:
                model = await asyncio.to_thread(load_model, self.directory / name, self.engine,
                                                name)
            except Exception as err:  # noqa: BLE001 - any failure keeps the old version
                self.failed[name] = str(err)
                log.error("model %s: the new version in %s is not served (%s); %s", name,
                          self.directory / name, err,
                          "the version before it still serves" if name in self.service.models
                          else "nothing is served under this name")
                continue
            self.failed.pop(name, None)
            model.fingerprint = fingerprint
            self._swap(name, model.start())
        for name in [n for n in self.seen if n not in found]:
            del self.seen[name]
            self.failed.pop(name, None)
            if name in self.service.models:
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
        if self.service.default_model not in models and models:
            self.service.default_model = next(iter(models))
        if old is not None:
            task = asyncio.create_task(self._retire(old))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)

    @staticmethod
    async def _retire(model: ServedModel) -> None:
        """Stop a replaced version once no stream holds it."""
        try:
            while model.streams:
                await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(model.stop)
            log.info("model %s: version %s stopped", model.name, model.bundle.version)
