"""`aipc eval`: how well a model predicts natural text, and how far a converted variant strays from its reference.

`metrics` holds the measurements (sliding windows, perplexity, KL, top-1 agreement) over any backend's `Scorer`;
`runner.evaluate` opens the models and tokenizes once; `report` prints the table. The shipped text lives in
`data/` (see data/README.md for its source and licence).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_TEXT = Path(__file__).parent / "data" / "jargon-file.txt"
