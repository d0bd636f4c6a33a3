"""`make demo`: serve a bundle, stream the labelled MNIST test digits through it, summarise.

Starts `anogan-serve` on a free port, runs the streaming client over the test CSV (digits
7 and 8 normal, 2 anomalous), prints the live table and the summary with AUROC, then
drains the server (SIGTERM) and checks that it exits cleanly. Leaves something to look at
in --report (reports/demo): the reject archive (every FAIL frame with its overlay), the
results as JSONL, the ROC curve, and summary.html (the figures and the worst frames with
their maps).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from anogan_inspect.clients import stream_client
from anogan_inspect.clients.launcher import ServerProcess
from anogan_inspect.clients.report import write_report
from anogan_inspect.help_format import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m anogan_inspect.clients.demo",
                                     description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"),
                        help="bundle to serve")
    parser.add_argument("--data", type=Path, default=Path("data/mnist_test.csv.gz"),
                        help="labelled MNIST-style CSV to stream")
    parser.add_argument("--folder", type=Path,
                        help="stream this MVTec-layout folder's test split instead of --data")
    parser.add_argument("--overlays", type=Path, metavar="DIR",
                        help="save an overlay per frame here (map, regions)")
    parser.add_argument("--report", type=Path, default=Path("reports/demo"), metavar="DIR",
                        help="the run's archive, results, ROC and summary.html (replaced)")
    parser.add_argument("--normal-labels", default="7,8", help="labels of normal rows")
    parser.add_argument("--anomaly-labels", default="2", help="labels of anomalous rows")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams")
    parser.add_argument("--rate", type=float, default=12.0,
                        help="frames/s over all streams, like a line camera (0: as fast as "
                             "the server answers; a rate the server cannot keep builds a "
                             "queue, and the client says so)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the demo's server listens on ([::]: every interface)")
    parser.add_argument("--port", type=int, default=0, help="its port (0: any free port)")
    parser.add_argument("--every", type=int, default=5,
                        help="print every N-th result (the summary counts them all)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra anogan-serve argument (repeat)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = ServerProcess([str(args.bundle)], Path(tmp) / "server.log",
                                   *args.server_arg, host=args.host, port=args.port)
        except RuntimeError as err:
            print(f"demo: {err}", file=sys.stderr)
            return 1
        source = (["--folder", str(args.folder)] if args.folder else
                  ["--csv", str(args.data), "--normal-labels", args.normal_labels,
                   "--anomaly-labels", args.anomaly_labels])
        print(f"demo: serving {args.bundle} at {server.target}; streaming "
              f"{args.folder or args.data} over {args.streams} streams at "
              f"{args.rate or 'max'} frames/s\n")
        report = args.report
        shutil.rmtree(report / "archive", ignore_errors=True)  # this run's, not the last's
        report.mkdir(parents=True, exist_ok=True)
        try:
            code = stream_client.main([
                "--target", server.target, *source,
                *(["--overlays", str(args.overlays)] if args.overlays else []),
                "--archive", str(report / "archive"), "--jsonl", str(report / "results.jsonl"),
                "--summary-json", str(report / "summary.json"), "--roc", str(report / "roc.png"),
                "--streams", str(args.streams), "--every", str(args.every),
                *(["--rate", str(args.rate)] if args.rate else []), "--fail-on-error"])
        finally:
            server_code = server.stop()
        if server_code != 0:
            print(f"demo: server exited {server_code}\n{server.log_path.read_text()}",
                  file=sys.stderr)
            return 1
        if args.overlays:
            print(f"demo: overlays (frame, anomaly map, regions) in {args.overlays}/")
        if (report / "summary.json").exists():
            page = write_report(report / "summary.html",
                                json.loads((report / "summary.json").read_text()),
                                report / "archive", report / "roc.png",
                                f"make demo: {args.bundle} on {args.folder or args.data}")
            print(f"demo: summary (figures, ROC, the worst frames with their maps): {page}")
            print(f"demo: every FAIL frame, its overlay and result: anogan-client archive "
                  f"list {report / 'archive'}")
        print("demo: server drained and stopped cleanly")
        return code

if __name__ == "__main__":
    sys.exit(main())
