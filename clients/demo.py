"""`make demo`: serve a bundle, stream the labelled MNIST test digits through it, summarise.

Starts `anogan-serve` on a free port, runs the streaming client over the test CSV (digits
7 and 8 normal, 2 anomalous), prints the live table and the summary with AUROC, then
drains the server (SIGTERM) and checks that it exits cleanly.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clients import stream_client


def start_server(bundle: Path, port_file: Path, log_file, extra: list[str]) -> subprocess.Popen:
    """anogan-serve on an ephemeral port; returns once it listens (its port in port_file)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--bundle", str(bundle), "--port", "0",
         "--port-file", str(port_file), *extra], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the server did not start; its log follows")
        time.sleep(0.1)
    return process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--data", type=Path, default=Path("data/mnist_test.csv.gz"))
    parser.add_argument("--normal-labels", default="7,8")
    parser.add_argument("--anomaly-labels", default="2")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rate", type=float, default=60.0,
                        help="frames/s over all streams, like a line camera (0: max)")
    parser.add_argument("--every", type=int, default=5, help="print every N-th result")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra anogan-serve argument (repeat)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        port_file, log_path = Path(tmp) / "port", Path(tmp) / "server.log"
        with open(log_path, "w") as log_file:
            try:
                server = start_server(args.bundle, port_file, log_file, args.server_arg)
            except RuntimeError as err:
                print(f"demo: {err}\n{log_path.read_text()}", file=sys.stderr)
                return 1
            target = f"localhost:{port_file.read_text().strip()}"
            print(f"demo: serving {args.bundle} at {target}; streaming {args.data} "
                  f"over {args.streams} streams at {args.rate or 'max'} frames/s\n")
            try:
                code = stream_client.main([
                    "--target", target, "--csv", str(args.data),
                    "--normal-labels", args.normal_labels,
                    "--anomaly-labels", args.anomaly_labels,
                    "--streams", str(args.streams), "--every", str(args.every),
                    *(["--rate", str(args.rate)] if args.rate else []),
                    "--fail-on-error"])
            finally:
                server.send_signal(signal.SIGTERM)
                server_code = server.wait(120)
        if server_code != 0:
            print(f"demo: server exited {server_code}\n{log_path.read_text()}", file=sys.stderr)
            return 1
        print("demo: server drained and stopped cleanly")
        return code


if __name__ == "__main__":
    sys.exit(main())
