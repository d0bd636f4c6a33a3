"""A run's summary as one HTML page, to look at after `make demo`: the counts, the AUROC and
confusion at the model's threshold, the ROC curve, and the frames that scored worst with
their overlays (from the reject archive), each linking to its archived files.

    python -m anogan_inspect.clients.report --summary S.json --archive DIR --out page.html
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from pathlib import Path

from anogan_inspect.clients.archive import Archive, iso_time

WORST = 12  # the frames shown


def write_report(out: Path, summary: dict, archive: Path | None, roc: Path | None,
                 title: str) -> Path:
    """Write the page (its pictures are the archive's files, linked relative to it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if archive is not None and (archive / "index.sqlite3").exists():
        with Archive(archive, read_only=True) as kept:
            worst = sorted((r for r in kept.list(limit=None) if r["score"] is not None),
                           key=lambda r: -r["score"])[:WORST]
            rows = [kept.get(r["id"]) for r in worst]  # their files' paths
    link = lambda path: html.escape(os.path.relpath(path, out.parent))  # noqa: E731
    confusion = summary.get("confusion")
    cells = "".join(
        f"<figure><a href='{link(r['original_path'])}'><img src='{link(r['overlay_path'])}' "
        f"alt='{html.escape(r['frame_id'])}'></a><figcaption>{html.escape(r['frame_id'])}"
        f"<br>{r['verdict']} {r['score']:.4g} (threshold {r['threshold']:.4g})<br>"
        f"archive id {r['id']}, {iso_time(r['time'])}</figcaption></figure>"
        for r in rows if r.get("overlay_path"))
    verdicts = summary["verdicts"]
    lines = [
        f"<tr><th>frames</th><td>{summary['frames']} ({summary['errors']} errors)</td></tr>",
        f"<tr><th>PASS / FAIL</th><td>{verdicts['PASS']} / {verdicts['FAIL']}</td></tr>",
        f"<tr><th>frames/s</th><td>{summary['frames_per_second']}</td></tr>",
        f"<tr><th>latency p50 / p99</th><td>{summary['latency_ms']['p50']} / "
        f"{summary['latency_ms']['p99']} ms</td></tr>",
    ]
    if "auroc" in summary:
        lines.append(f"<tr><th>AUROC</th><td>{summary['auroc']:.4f}</td></tr>")
    if confusion:
        lines.append("<tr><th>at the threshold</th><td>"
                     f"{confusion['true_positive']} defects failed, "
                     f"{confusion['false_negative']} passed; "
                     f"{confusion['false_positive']} normal frames failed, "
                     f"{confusion['true_negative']} passed</td></tr>")
    roc_html = f"<img class='roc' src='{link(roc)}' alt='ROC curve'>" \
        if roc is not None and roc.exists() else ""
    out.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>
body{{font:14px system-ui,sans-serif;margin:16px;background:#111;color:#ddd}}
th{{text-align:left;padding-right:16px;color:#aaa}} .roc{{width:420px;background:#fff}}
figure{{display:inline-block;margin:6px;width:180px;vertical-align:top;font-size:12px}}
figure img{{width:180px;image-rendering:pixelated}} a{{color:#8bf}}</style></head><body>
<h1>{html.escape(title)}</h1><table>{''.join(lines)}</table>{roc_html}
<h2>Worst frames (highest scores in the archive), with their maps</h2>{cells or
'<p>none archived</p>'}
<p>Every frame archived: <code>anogan-client archive list {html.escape(str(archive))}</code>
</p></body></html>
""")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anogan_inspect.clients.report",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", type=Path, required=True, help="anogan-client's "
                                                                     "--summary-json")
    parser.add_argument("--archive", type=Path, help="anogan-client's --archive folder")
    parser.add_argument("--roc", type=Path, help="anogan-client's --roc PNG")
    parser.add_argument("--out", type=Path, required=True, help="the HTML page to write")
    parser.add_argument("--title", default="anogan-inspect: run summary")
    args = parser.parse_args(argv)
    try:
        summary = json.loads(args.summary.read_text())
    except (OSError, ValueError) as err:
        print(f"report: error: {args.summary}: {err}", file=sys.stderr)
        return 2
    print(write_report(args.out, summary, args.archive, args.roc, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
