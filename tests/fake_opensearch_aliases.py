"""The fake OpenSearch's alias API: POST /_aliases (atomic), the index-scoped PUT/DELETE
/{index}/_alias/{name} (and `_aliases`), the body forms, and GET/HEAD. Modelled on the API
specification's stories tests/default/_core/aliases.yaml, tests/default/_core/alias.yaml,
tests/default/indices/alias/alias.yaml and tests/default/indices/aliases/aliases.yaml, which
tests/test_fake_opensearch_engine.py follows."""

from __future__ import annotations

import fnmatch
from typing import Any

from fake_opensearch_rules import ApiError, bad

ALIAS_OPTIONS = {"routing", "index_routing", "search_routing", "is_write_index", "filter", "is_hidden"}


class AliasApi:
    """Mixed into FakeOpenSearch: needs `indices`, `aliases` ({alias: {index}}), `alias_options`,
    `resolve` and `service`."""

    indices: dict
    aliases: dict[str, set[str]]
    alias_options: dict[tuple[str, str], dict]
    service: str

    def alias_request(self, method: str, parts: list[str], body: Any) -> tuple[int, Any]:
        """Every alias endpoint; `parts` is the path split on '/'."""
        body = body if isinstance(body, dict) else {}
        if parts == ["_aliases"] and method == "POST":
            return self.update_aliases(body)
        if self.service == "aoss":
            # The Serverless operations page lists POST _aliases for aliases; the index-scoped
            # endpoints are not known to be offered, so the fake refuses them (clipsearch sends
            # _aliases on Serverless).
            raise ApiError(404, "not_found", f"{method} /{'/'.join(parts)} is not modelled for OpenSearch Serverless")
        if parts[0] in ("_alias", "_aliases"):  # /_alias[/{name}]
            index, name = body.get("index"), parts[1] if len(parts) > 1 else body.get("alias")
        else:  # /{index}/_alias[/{name}]
            index, name = parts[0], parts[2] if len(parts) > 2 else body.get("alias")
        if method in ("GET", "HEAD"):
            return self._get_aliases(parts[0] if not parts[0].startswith("_") else None, name, method)
        if method == "DELETE":
            return self._delete_alias(index, name)
        if method in ("PUT", "POST"):
            if not index or not name:
                raise bad("Validation Failed: 1: index is missing;2: alias is missing;", "action_request_validation_exception")
            options = {k: v for k, v in body.items() if k in ALIAS_OPTIONS}
            return self._apply([("add", i, name, options) for i in self.resolve(index)])
        raise bad(f"no handler found for uri [/{'/'.join(parts)}] and method [{method}]")

    def update_aliases(self, body: dict) -> tuple[int, Any]:
        actions = body.get("actions")
        if not isinstance(actions, list) or not actions or set(body) != {"actions"}:
            raise bad("Validation Failed: 1: no actions specified;", "action_request_validation_exception")
        plan = []
        for a in actions:
            if not isinstance(a, dict) or len(a) != 1:
                raise bad("[aliases] action malformed", "parsing_exception")
            (op, spec), = a.items()
            if op not in ("add", "remove", "remove_index"):
                raise bad(f"[aliases] unknown field [{op}]", "parsing_exception")
            extra = set(spec) - {"index", "indices", "alias", "aliases", "must_exist"} - ALIAS_OPTIONS
            if extra:
                raise bad(f"[{op}] unknown field [{sorted(extra)[0]}]", "parsing_exception")
            indices = spec.get("indices") or [spec.get("index")]
            names = spec.get("aliases") or [spec.get("alias")]
            options = {k: v for k, v in spec.items() if k in ALIAS_OPTIONS}
            for pattern in indices:
                for i in self.resolve(str(pattern)):
                    for al in (names if op != "remove_index" else [None]):
                        if op != "remove_index" and not al:
                            raise bad("Validation Failed: 1: [alias] is required", "action_request_validation_exception")
                        plan.append((op, i, al, options))
        return self._apply(plan)

    def _apply(self, plan: list[tuple[str, str, str | None, dict]]) -> tuple[int, Any]:
        for op, i, al, _ in plan:  # all checked first: OpenSearch applies an update atomically
            if op == "add" and al in self.indices:
                raise bad(f"Invalid alias name [{al}]: an index or data stream exists with the same name as the alias",
                          "invalid_alias_name_exception")
            if op == "remove" and i not in self.aliases.get(al, set()):
                raise ApiError(404, "aliases_not_found_exception", f"aliases [{al}] missing")
        for op, i, al, options in plan:
            if op == "add":
                self.aliases.setdefault(al, set()).add(i)
                self.alias_options[(al, i)] = options
            elif op == "remove":
                self.aliases[al].discard(i)
                self.alias_options.pop((al, i), None)
            else:
                self.drop_index(i)
        self.aliases = {a: idx for a, idx in self.aliases.items() if idx}
        return 200, {"acknowledged": True}

    def _delete_alias(self, index: str | None, pattern: str | None) -> tuple[int, Any]:
        if not index or not pattern:
            raise bad("Validation Failed: 1: index is missing;", "action_request_validation_exception")
        indices = self.resolve(index)
        plan = [("remove", i, al, {}) for al, idx in self.aliases.items() if fnmatch.fnmatchcase(al, pattern)
                for i in indices if i in idx]
        if not plan:
            raise ApiError(404, "aliases_not_found_exception", f"aliases [{pattern}] missing")
        return self._apply(plan)

    def _get_aliases(self, index: str | None, pattern: str | None, method: str) -> tuple[int, Any]:
        indices = self.resolve(index) if index else sorted(self.indices)
        out: dict[str, dict] = {}
        for i in indices:
            names = {al: self.alias_options.get((al, i), {}) for al, idx in self.aliases.items()
                     if i in idx and (pattern is None or fnmatch.fnmatchcase(al, pattern))}
            if names or pattern is None:
                out[i] = {"aliases": names}
        if pattern is not None and not out:
            return 404, None if method == "HEAD" else {"error": f"alias [{pattern}] missing", "status": 404}
        return 200, None if method == "HEAD" else out

    def drop_index(self, name: str) -> None:
        raise NotImplementedError  # FakeOpenSearch provides it

    def resolve(self, target: str, *, allow_missing: bool = False) -> list[str]:
        raise NotImplementedError  # FakeOpenSearch provides it
