"""The alias clients name and the generations (physical indexes) behind it.

A generation is an index clipsearch created for the alias: `{alias}-{model}-{dim}-{UTC
timestamp}`, with the alias in its mapping's `_meta`. The alias points at one of them. Moving it:

- Managed domains and self-managed clusters: `PUT /{new}/_alias/{alias}`, then `DELETE
  /{old}/_alias/{alias}` for each index it pointed at. Amazon OpenSearch Service authorises a
  request by its URL, and these URLs name the index, so the ingest role's policy can confine
  them to the alias's own indexes; the atomic `POST /_aliases` names its indexes in the body,
  where no policy can reach (and its `remove_index` action deletes any index). The price is a
  moment between the two requests when the alias names both generations: readers then take the
  newest generation (`choose`), which is the one the move is heading to.
- Serverless: one `POST /_aliases` request, the alias operation its documentation lists
  ("Supported operations and plugins in Amazon OpenSearch Serverless": aoss:CreateCollectionItems
  POST _aliases); its data access policies are not URL-based, so nothing is lost there.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from clipsearch.errors import ClipsearchError, IndexMissing
from clipsearch.index.opensearch_errors import Guard

log = logging.getLogger("clipsearch.index.opensearch")
STAMP = re.compile(r"-(\d{17})$")  # opensearch_mapping.physical_name's timestamp, to the millisecond


def meta_of(mapping: dict) -> dict:
    meta = mapping.get("_meta", {}).get("clipsearch", {})
    return meta if isinstance(meta, dict) else {}


def mappings(client, target: str) -> dict[str, dict]:
    """{physical index: mappings} for an alias, index or pattern; {} when nothing matches."""
    from opensearchpy.exceptions import NotFoundError

    from clipsearch.index.opensearch_errors import error_type

    try:
        got = client.indices.get_mapping(index=target)
    except NotFoundError as exc:
        if error_type(exc) == "index_not_found_exception":
            return {}
        raise
    return {name: body.get("mappings", {}) for name, body in got.items()}


def is_generation(name: str, mapping: dict, alias: str) -> bool:
    return name.startswith(f"{alias}-") and meta_of(mapping).get("alias") == alias and bool(STAMP.search(name))


def created(name: str) -> str:
    """The UTC creation time written into a generation's name, as ISO 8601."""
    m = STAMP.search(name)
    if not m:
        return ""
    s = m.group(1)
    return f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[8:10]}:{s[10:12]}:{s[12:14]}.{s[14:17]}Z"


def choose(alias: str, live: dict[str, dict]) -> str | None:
    """The index the alias serves: its only index, or the newest of several generations (a move
    in progress or interrupted between its two requests). Anything else is refused."""
    if len(live) <= 1:
        return next(iter(live), None)
    if all(is_generation(name, mapping, alias) for name, mapping in live.items()):
        newest = max(live, key=lambda name: STAMP.search(name).group(1))
        log.warning("alias %s names %d generations (%s): serving the newest, %s", alias, len(live),
                    ", ".join(sorted(live)), newest)
        return newest
    raise IndexMissing(f"OpenSearch alias {alias!r} points at {len(live)} indices ({', '.join(sorted(live))}); "
                       "it must point at one: re-run ingest to move it")


def point(client, alias: str, index: str, service: str, guard: Guard) -> list[str]:
    """Make `alias` name `index` and nothing else; returns the indexes it was taken from."""
    with guard("reading the alias"):
        before = [name for name in mappings(client, alias) if name != alias]
    old = [name for name in before if name != index]
    if index in before and not old:
        return []
    if service == "aoss":
        actions: list[dict[str, Any]] = [{"remove": {"index": name, "alias": alias}} for name in old]
        actions.append({"add": {"index": index, "alias": alias}})
        with guard("moving the alias"):
            client.indices.update_aliases(body={"actions": actions})
        return old
    from opensearchpy.exceptions import NotFoundError

    with guard("moving the alias"):
        client.indices.put_alias(index=index, name=alias)
    for name in old:
        try:
            with guard("moving the alias"):
                client.indices.delete_alias(index=name, name=alias)
        except (NotFoundError, IndexMissing):  # already gone: another run moved it, or the index was deleted
            pass
    return old


@dataclass(frozen=True)
class Generation:
    name: str
    model_id: str
    dim: int
    created: str
    live: bool
    count: int


def generations(client, alias: str, guard: Guard) -> list[Generation]:
    """The alias's generations, newest first, with their document counts."""
    with guard("listing indices"):
        found = {name: m for name, m in mappings(client, f"{alias}-*").items() if is_generation(name, m, alias)}
        live = set(mappings(client, alias)) if found else set()
    out = []
    for name in sorted(found, key=lambda n: STAMP.search(n).group(1), reverse=True):
        meta = meta_of(found[name])
        with guard("counting"):
            total = client.search(index=name, body={"size": 0, "track_total_hits": True,
                                                    "query": {"match_all": {}}})["hits"]["total"]["value"]
        out.append(Generation(name, str(meta.get("model_id")), int(meta.get("dim", 0)), created(name),
                              name in live, int(total)))
    return out


def delete(client, alias: str, names: list[str], guard: Guard) -> list[str]:
    """Delete old generations of `alias`; refuses the one it serves and anything not its generation."""
    known = {g.name: g for g in generations(client, alias, guard)}
    for name in names:
        if name not in known:
            raise ClipsearchError(f"{name!r} is not a generation of alias {alias!r}: "
                                  f"`python -m ingest generations` lists them")
        if known[name].live:
            raise ClipsearchError(f"{name!r} is the generation alias {alias!r} serves: it is never deleted")
    for name in names:
        with guard("deleting an index"):
            client.indices.delete(index=name)
        log.info("deleted generation %s of alias %s", name, alias)
    return names
