"""The operator's page (`anogan-client ... --web PORT`): what the line is doing, live.

A small aiohttp application in the client's own event loop, on 127.0.0.1 by default. One
page, no dependencies of its own (plain HTML, CSS and JavaScript, drawn with inline SVG),
polling a JSON endpoint once a second:

- the last results, with thumbnails of their overlays (frame, map, regions);
- PASS, FAIL and error counts, and the reject rate over time (10-second buckets);
- the last scores on a plot with the model's threshold as a line;
- the server's model, its version (of the last result) and whether it answers;
- the reject archive (with --archive): its newest frames, each opening to the original,
  the overlay and the result.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from pathlib import Path

import grpc
from aiohttp import web

from anogan.v1 import inspection_pb2 as pb

LAST_RESULTS = 48  # the results shown, with their thumbnails
SCORES = 300  # the scores plotted
BUCKET_SECONDS = 10  # the reject rate's resolution
BUCKETS = 360  # an hour of buckets
HEALTH_SECONDS = 5.0  # how often the server is asked for its model
PAGE = (Path(__file__).parent / "page.html").read_text()  # package data


class LivePage:
    """The page's state, fed by the client's ResultSink (from worker threads: guarded by a
    lock), and its web server."""

    def __init__(self, stub, metadata, model: pb.Model, archive, args):
        self.stub, self.metadata, self.model, self.archive = stub, metadata, model, archive
        self.target = args.target
        self._lock = threading.Lock()
        self.results: deque[dict] = deque(maxlen=LAST_RESULTS)
        self.thumbs: dict[int, bytes] = {}
        self.scores: deque[tuple] = deque(maxlen=SCORES)
        self.buckets: deque[list] = deque(maxlen=BUCKETS)  # [start, pass, fail, error]
        self.counts = {"PASS": 0, "FAIL": 0, "ERROR": 0}
        self.version = model.version
        self.health = {"ok": True, "checked": time.time(), "detail": "serving"}
        self.started = time.time()
        self.runner: web.AppRunner | None = None
        self.url = ""
        self._health_task: asyncio.Task | None = None

    # -- fed by the client -------------------------------------------------------------------

    def add(self, fields: dict, version: str, thumb: bytes | None, archived: int | None) -> None:
        verdict = "ERROR" if fields["error"] else fields["verdict"]
        now = time.time()
        with self._lock:
            self.counts[verdict] = self.counts.get(verdict, 0) + 1
            start = now - now % BUCKET_SECONDS
            if not self.buckets or self.buckets[-1][0] != start:
                self.buckets.append([start, 0, 0, 0])
            self.buckets[-1][1 + ("PASS", "FAIL", "ERROR").index(verdict)] += 1
            if fields["score"] is not None:
                self.scores.append((fields["sequence"], fields["score"], fields["threshold"],
                                    verdict))
            if version:
                self.version = version
            if len(self.results) == self.results.maxlen:
                self.thumbs.pop(self.results[0]["sequence"], None)
            self.results.append({**fields, "verdict": verdict, "version": version,
                                 "time": now, "archived": archived,
                                 "thumb": thumb is not None})
            if thumb is not None:
                self.thumbs[fields["sequence"]] = thumb

    def state(self) -> dict:
        with self._lock:
            total = sum(self.counts.values())
            return {
                "target": self.target,
                "model": {"name": self.model.name, "version": self.version,
                          "threshold": self.model.threshold,
                          "kind": _kind(self.model)},
                "health": self.health,
                "counts": dict(self.counts),
                "reject_rate": (self.counts["FAIL"] / total) if total else None,
                "buckets": [list(b) for b in self.buckets],
                "bucket_seconds": BUCKET_SECONDS,
                "scores": [list(s) for s in self.scores],
                "results": list(reversed(self.results)),
                "archive": self.archive is not None,
                "since": self.started,
            }

    # -- the web server ----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/api/state", lambda _: web.json_response(self.state()))
        app.router.add_get("/thumb/{sequence}.png", self._thumb)
        app.router.add_get("/api/archive", self._archive_list)
        app.router.add_get("/api/archive/{id}", self._archive_row)
        app.router.add_get("/archive/{id}/{which}", self._archive_file)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # the port chosen for port 0
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}/"
        self._health_task = asyncio.create_task(self._watch_health())

    async def stop(self) -> None:
        if self._health_task:
            self._health_task.cancel()
        if self.runner:
            await self.runner.cleanup()

    async def _watch_health(self) -> None:
        """Ask the server for its model every HEALTH_SECONDS: its version, and whether it
        answers at all."""
        while True:
            await asyncio.sleep(HEALTH_SECONDS)
            try:
                model = (await self.stub.GetModel(pb.GetModelRequest(name=self.model.name),
                                                  metadata=self.metadata, timeout=5)).model
                self.model, detail, ok = model, "serving", True
            except grpc.aio.AioRpcError as err:
                detail, ok = f"{err.code().name}: {err.details()}", False
            self.health = {"ok": ok, "checked": time.time(), "detail": detail}

    async def _page(self, _request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def _thumb(self, request) -> web.Response:
        with self._lock:
            data = self.thumbs.get(int(request.match_info["sequence"]))
        if data is None:
            raise web.HTTPNotFound(text="no thumbnail (the page keeps the last results only)")
        return web.Response(body=data, content_type="image/png")

    async def _archive_list(self, request) -> web.Response:
        if self.archive is None:
            raise web.HTTPNotFound(text="no archive: start the client with --archive DIR")
        verdict = request.query.get("verdict") or None
        rows = await asyncio.to_thread(self.archive.list, verdict=verdict,
                                       limit=int(request.query.get("limit", 50)))
        return web.json_response(rows)

    async def _archive_row(self, request) -> web.Response:
        row = await self._row(request)
        return web.json_response({k: v for k, v in row.items() if not k.endswith("_path")})

    async def _archive_file(self, request) -> web.FileResponse:
        row = await self._row(request)
        which = request.match_info["which"]
        path = row.get(f"{which}_path") if which in ("original", "overlay") else None
        if not path:
            raise web.HTTPNotFound(text=f"no {which} file for this frame")
        return web.FileResponse(path)

    async def _row(self, request) -> dict:
        if self.archive is None:
            raise web.HTTPNotFound(text="no archive: start the client with --archive DIR")
        try:
            row_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPBadRequest(text="an archive id is a number") from None
        row = await asyncio.to_thread(self.archive.get, row_id)
        if row is None:
            raise web.HTTPNotFound(text=f"no frame {row_id} in the archive (the oldest go "
                                        "first when it is full)")
        return row


def _kind(model: pb.Model) -> str:
    if model.memory.extractor:
        return f"memory ({model.memory.extractor})"
    return "tiled" if model.tiling.patch else "whole-frame"
