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

With an admin token (`--admin-token-file`), a result can be marked GOOD or DEFECT from the
page: the server's Feedback call, which teaches a model served from a models folder
(docs/textures.md, "Live, from the operators' verdicts"). With the server's metrics URL
(`--metrics-url`), the page shows the model's score drift: the population stability index
of its recent scores against its held-out normal ones, and their FAIL shares.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import deque
from pathlib import Path

import grpc
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from anogan.v1 import inspection_pb2 as pb
from anogan_inspect.tokens import read_tokens

LAST_RESULTS = 48  # the results shown, with their thumbnails
SCORES = 300  # the scores plotted
BUCKET_SECONDS = 10  # the reject rate's resolution
BUCKETS = 360  # an hour of buckets
HEALTH_SECONDS = 5.0  # how often the server is asked for its model
PAGE_HEADER = "X-Anogan-Page"  # what the page's own verdict requests carry
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
PAGE = (Path(__file__).parent / "page.html").read_text()  # package data


class LivePage:
    """The page's state, fed by the client's ResultSink (from worker threads: guarded by a
    lock), and its web server."""

    def __init__(self, stub, metadata, model: pb.Model, archive, args):
        self.stub, self.metadata, self.model, self.archive = stub, metadata, model, archive
        self.target = args.target
        admin = getattr(args, "admin_token_file", None)
        self.admin = (("authorization", f"Bearer {read_tokens(admin)[0]}"),) if admin else None
        self._lock = threading.Lock()
        self.results: deque[dict] = deque(maxlen=LAST_RESULTS)
        self.thumbs: dict[int, bytes] = {}
        self.scores: deque[tuple] = deque(maxlen=SCORES)
        self.buckets: deque[list] = deque(maxlen=BUCKETS)  # [start, pass, fail, error]
        self.counts = {"PASS": 0, "FAIL": 0, "ERROR": 0}
        self.version = model.version
        self.health = {"ok": True, "checked": time.time(), "detail": "serving"}
        self.started = time.time()
        self.metrics_url = getattr(args, "metrics_url", None)
        self.drift: dict[str, dict[str, float]] = {}  # score kind → figure → value
        self.runner: web.AppRunner | None = None
        self.loopback = True
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
                "drift": self.drift,
                "counts": dict(self.counts),
                "reject_rate": (self.counts["FAIL"] / total) if total else None,
                "buckets": [list(b) for b in self.buckets],
                "bucket_seconds": BUCKET_SECONDS,
                "scores": [list(s) for s in self.scores],
                "results": list(reversed(self.results)),
                "archive": self.archive is not None,
                "feedback": self.admin is not None,
                "since": self.started,
            }

    # -- the web server ----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        self.loopback = host in ("127.0.0.1", "localhost", "::1")
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/api/state", lambda _: web.json_response(self.state()))
        app.router.add_get("/thumb/{sequence}.png", self._thumb)
        app.router.add_get("/api/archive", self._archive_list)
        app.router.add_get("/api/archive/{id}", self._archive_row)
        app.router.add_get("/archive/{id}/{which}", self._archive_file)
        app.router.add_post("/api/feedback", self._feedback)
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
        answers at all; and its drift figures, from its metrics."""
        async with ClientSession(timeout=ClientTimeout(total=5)) as session:
            while True:
                try:
                    model = (await self.stub.GetModel(
                        pb.GetModelRequest(name=self.model.name), metadata=self.metadata,
                        timeout=5)).model
                    self.model, detail, ok = model, "serving", True
                except grpc.aio.AioRpcError as err:
                    detail, ok = f"{err.code().name}: {err.details()}", False
                self.health = {"ok": ok, "checked": time.time(), "detail": detail}
                if self.metrics_url:
                    try:
                        async with session.get(self.metrics_url) as response:
                            text = await response.text()
                        self.drift = drift_figures(text, self.model.name, self.model.version)
                    except (ClientError, asyncio.TimeoutError) as err:
                        self.drift = {"error": {"detail": f"{self.metrics_url}: {err}"}}
                await asyncio.sleep(HEALTH_SECONDS)

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

    async def _feedback(self, request) -> web.Response:
        """An operator's verdict on a result: the server's Feedback call, by frame id."""
        if self.admin is None:
            raise web.HTTPForbidden(text="start the client with --admin-token-file to mark "
                                         "results from the page")
        # Only the page itself: another site's page in the operator's browser cannot send
        # this header or this content type without a CORS preflight, which is never
        # granted; and a page that a rebound DNS name brings to a loopback address names
        # another host.
        if request.headers.get(PAGE_HEADER) != "1" or request.content_type != \
                "application/json" or (self.loopback and request.host.rsplit(":", 1)[0]
                                       not in LOOPBACK_NAMES):
            raise web.HTTPForbidden(text="verdicts come from the operator's page only")
        body = await request.json()
        label = {"GOOD": pb.OPERATOR_LABEL_GOOD, "DEFECT": pb.OPERATOR_LABEL_DEFECT}.get(
            body.get("label"))
        if label is None or not body.get("frame_id"):
            raise web.HTTPBadRequest(text="expected {frame_id, label: GOOD|DEFECT}")
        try:
            answer = await self.stub.Feedback(pb.FeedbackRequest(
                model=self.model.name, frame_id=body["frame_id"], label=label,
                note=str(body.get("note", "from the operator's page"))),
                metadata=self.admin, timeout=300)
        except grpc.aio.AioRpcError as err:
            return web.json_response({"ok": False, "error": f"{err.code().name}: "
                                                            f"{err.details()}"}, status=409)
        return web.json_response({
            "ok": True, "outcome": pb.FeedbackOutcome.Name(answer.outcome)
            .removeprefix("FEEDBACK_OUTCOME_"), "good_collected": answer.good_collected,
            "new_version": answer.new_version})


# A sample line of the server's Prometheus text: name{labels} value.
_SAMPLE = re.compile(r'^anogan_drift_(\w+)\{([^}]*)\}\s+(\S+)$', re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def drift_figures(metrics: str, model: str, version: str) -> dict[str, dict[str, float]]:
    """The drift gauges of one model version (server/monitoring.py: psi, fail_share,
    heldout_fail_share, window_frames), per score kind ("fast", "search_100") that has
    scores in its window."""
    figures: dict[str, dict[str, float]] = {}
    for name, labels, value in _SAMPLE.findall(metrics):
        found = dict(_LABEL.findall(labels))
        if found.get("model") == model and found.get("version") == version and \
                math.isfinite(float(value)):  # (NaN: no scores of that kind yet; not JSON)
            figures.setdefault(found.get("score", ""), {})[name] = float(value)
    return {kind: f for kind, f in figures.items() if f.get("window_frames")}


def _kind(model: pb.Model) -> str:
    if model.memory.extractor:
        return f"memory ({model.memory.extractor})"
    return "tiled" if model.tiling.patch else "whole-frame"
