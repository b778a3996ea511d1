"""Per-status precision and recall of the symptom reader on the labelled phrase corpus.

    python -m benchmarks.symptom_corpus [--json] [--errors heldout|dev|all]

The corpus (`tests/data/symptom_corpus_*.csv`: text, concept, expected status) was written for
this in two halves: `heldout` was written and frozen first (its SHA-256 is checked below and in
`tests/test_symptom_corpus.py`), before the ConText reader existed; the reader was developed on
`dev` only. Each row asks one concept's status in one phrase; a concept the reader does not find
counts as status "none" (a miss for the expected status). Precision of a status counts every row
the reader gave that status to.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from pathlib import Path

from models.knowledge.symptoms import FindingStatus, extract_findings

__all__ = ["CORPUS", "HELDOUT_SHA256", "load", "score"]

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data"
HELDOUT_SHA256 = "b39a336d21d4ea72e92304103222fd667c4f4565bacfbf7d0efdac0f34310d41"
STATUSES = [s.value for s in FindingStatus]


def load(half: str) -> list[dict[str, str]]:
    """Rows of one half ("heldout", "dev") or of both ("all")."""
    if half == "all":
        return load("heldout") + load("dev")
    with (CORPUS / f"symptom_corpus_{half}.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def heldout_digest() -> str:
    return hashlib.sha256((CORPUS / "symptom_corpus_heldout.csv").read_bytes()).hexdigest()


def score(rows: list[dict[str, str]]) -> dict[str, object]:
    """Per-status precision, recall and support, the phrase count and the misreads."""
    cache: dict[str, dict[str, str]] = {}
    pairs = []
    for row in rows:
        if row["text"] not in cache:
            cache[row["text"]] = {c: s.value for c, s in extract_findings(row["text"]).status.items()}
        pairs.append((row, cache[row["text"]].get(row["concept"], "none")))
    per_status: dict[str, dict[str, float | int | None]] = {}
    for s in STATUSES:
        tp = sum(1 for r, got in pairs if r["status"] == s and got == s)
        said = sum(1 for _, got in pairs if got == s)
        support = sum(1 for r, _ in pairs if r["status"] == s)
        per_status[s] = {
            "precision": tp / said if said else None,
            "recall": tp / support if support else None,
            "support": support,
        }
    errors = [
        {"text": r["text"], "concept": r["concept"], "expected": r["status"], "got": got}
        for r, got in pairs
        if got != r["status"]
    ]
    return {"phrases": len(cache), "rows": len(rows), "per_status": per_status, "errors": errors}


def _fmt(x: object) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    ap.add_argument("--errors", choices=["heldout", "dev", "all"], help="also list the misreads of one half")
    args = ap.parse_args()
    frozen = heldout_digest() == HELDOUT_SHA256
    out: dict[str, object] = {"heldout_frozen": frozen}
    for half in ("heldout", "dev", "all"):
        out[half] = score(load(half))
    texts = [r["text"] for r in load("all")]
    start = time.perf_counter()
    for t in texts:
        extract_findings(t)
    out["ms_per_phrase"] = (time.perf_counter() - start) * 1000 / len(texts)
    if args.json:
        print(json.dumps({k: v if not isinstance(v, dict) else {**v, "errors": v["errors"]} for k, v in out.items()}))
        return
    print(f"held-out half frozen (SHA-256 matches): {frozen}; {out['ms_per_phrase']:.3f} ms a phrase")
    print(f"{'status':<13}" + "".join(f"| {h:<7} P      R      n   " for h in ("heldout", "dev", "all")))
    for s in STATUSES:
        cells = []
        for half in ("heldout", "dev", "all"):
            m = out[half]["per_status"][s]  # type: ignore[index]
            cells.append(f"| {_fmt(m['precision']):>13} {_fmt(m['recall'])} {m['support']:>4} ")
        print(f"{s:<13}" + "".join(cells))
    counts = [f"{h} {out[h]['phrases']} ({out[h]['rows']} rows)" for h in ("heldout", "dev", "all")]  # type: ignore[index]
    print("phrases: " + ", ".join(counts))
    if args.errors:
        for e in out[args.errors]["errors"]:  # type: ignore[index]
            print(f"  {e['text']!r}: {e['concept']} expected {e['expected']}, got {e['got']}")


if __name__ == "__main__":
    main()
