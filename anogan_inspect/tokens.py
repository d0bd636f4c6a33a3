"""Bearer-token files, as the server (`--auth-token-file`) and the client (`--token-file`)
both read them: one token per line, blank lines and `#` comments skipped."""

from __future__ import annotations

from pathlib import Path


def read_tokens(path: Path) -> list[str]:
    """The file's tokens, in order; ValueError naming the file when it cannot be read or
    holds none."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the token file {path}: {err}") from err
    tokens = [line.strip() for line in lines
              if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ValueError(f"the token file {path} holds no token")
    return tokens
