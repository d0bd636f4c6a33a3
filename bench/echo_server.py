"""The gRPC ceiling's server: `anogan-serve` with scoring taken out (benchmarks only).

    python -m bench.echo_server --bundle bundles/default [anogan-serve's options]

Everything a frame meets in the real server runs (gRPC, the stream's reader, sequencer
and in-flight window, decoding, preprocessing, the result message), except the models:
every frame is answered PASS with score 0 at once. Its frames/s is what one server process
can carry at all, the ceiling the modes' figures are read against (bench/line_bench.py).
"""

from __future__ import annotations

import sys

from anogan_inspect.server import app, cli
from anogan_inspect.server.models import Outcome, ServedModel, Stage


def without_scoring(model: ServedModel) -> ServedModel:
    """The model with `inspect` answering at once (the frame was decoded and preprocessed
    by the service before it gets here)."""
    async def inspect(x, mode, steps=None, want_reconstruction=False, on_provisional=None,
                      owner=None):
        return Outcome(True, Stage.FAST, mode, 0.0, 0.0, 0.0, 0, False, 0.0, 0.0,
                       threshold=model.fast_threshold)

    model.inspect = inspect
    return model


def main(argv: list[str] | None = None) -> int:
    load = app.load_models
    app.load_models = lambda config: {name: without_scoring(model)
                                      for name, model in load(config).items()}
    return cli.main(argv, module="bench.echo_server")  # --workers N start N of these


if __name__ == "__main__":
    sys.exit(main())
