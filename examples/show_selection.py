"""Print the domain mix of an exported selection (JSON-lines part files), for the demo."""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path


def main(folder: Path) -> None:
    rows = [json.loads(line) for part in sorted(folder.glob("part-*.json")) for line in part.open(encoding="utf-8")]
    mix = collections.Counter(r.get("domain") for r in rows)
    print(f"\n{len(rows)} selected documents by domain (the target is sci_abstracts):")
    for domain, count in mix.most_common():
        print(f"  {domain:<20} {count:>5}  {count / max(len(rows), 1):6.1%}")
    top = sorted(rows, key=lambda r: r["rank"])[:3]
    for r in top:
        print(f"  rank {r['rank']:>3}  log_weight {r['log_weight']:8.2f}  {r['id']}: {r['text'][:70]!r}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
