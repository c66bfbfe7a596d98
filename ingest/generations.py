"""python -m ingest generations: the OpenSearch alias's generations, and deleting old ones.

    python -m ingest generations                 # list them: model, documents, created, which one serves
    python -m ingest generations --delete NAME   # delete old generations by name
    python -m ingest generations --prune         # delete every generation the alias does not serve

Each model change leaves the previous generation (physical index) behind for rollback. Requests
are signed like every other one (OPENSEARCH_AUTH=sigv4 signs with the boto3 credential chain), so
this works on an Amazon OpenSearch Service domain where an unsigned `curl -XDELETE` gets 403. The
generation the alias serves is never deleted.
"""

from __future__ import annotations

import argparse
import json
import sys

from clipsearch.config import OpenSearchSettings
from clipsearch.errors import ClipsearchError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ingest generations", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--delete", nargs="+", metavar="NAME", help="delete these old generations")
    what.add_argument("--prune", action="store_true", help="delete every generation the alias does not serve")
    ap.add_argument("--json", action="store_true", help="print the generations as JSON")
    return ap


def main(argv: list[str] | None = None, settings: OpenSearchSettings | None = None) -> int:
    """The subcommand; returns the exit code (0 done, 1 refused or failed, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    settings = settings or OpenSearchSettings.from_env()
    try:
        return _run(args, settings)
    except (ClipsearchError, ValueError) as exc:
        print(f"ingest generations: error: {exc}", file=sys.stderr)
        return 1


def _run(args, settings: OpenSearchSettings) -> int:
    from clipsearch.index import opensearch_alias as generations
    from clipsearch.index.opensearch_client import get_client
    from clipsearch.index.opensearch_errors import translate_errors

    client = get_client(settings)
    alias, url = settings.index, settings.url or ""

    def guard(what: str):
        return translate_errors(what, alias, url)

    found = generations.generations(client, alias, guard)
    doomed = list(args.delete or [])
    if args.prune:
        doomed = [g.name for g in found if not g.live]
    if doomed:
        generations.delete(client, alias, doomed, guard)
        for name in doomed:
            print(f"deleted {name}")
        found = [g for g in found if g.name not in doomed]
    if args.json:
        print(json.dumps([g.__dict__ for g in found], ensure_ascii=False))
    elif not doomed or args.prune:
        print(_table(alias, found))
    return 0


def _table(alias: str, found) -> str:
    if not found:
        return f"no generations of alias {alias!r}"
    rows = [("", "generation", "model", "dim", "documents", "created (UTC)")]
    rows += [("*" if g.live else "", g.name, g.model_id, str(g.dim), str(g.count), g.created) for g in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + [f"* = the generation alias {alias!r} serves"])
