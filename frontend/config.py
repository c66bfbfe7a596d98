"""The front-end's settings (streamlit_app.py and frontend/), read as the core's are (clipsearch.config)."""

from __future__ import annotations

from dataclasses import dataclass

from clipsearch.config import Section, env, number, path_list, stripped

DEFAULT_API_URL = "http://localhost:8000/search"  # the local gateway of `make demo`


@dataclass(frozen=True)
class FrontendSettings(Section):
    # Where POST /search lives, its optional API key (x-api-key), and how long to keep retrying
    # while a cold Lambda warms up.
    api_url: str = env("CLIPSEARCH_API_URL", DEFAULT_API_URL, stripped)
    api_key: str | None = env("CLIPSEARCH_API_KEY", secret=True)
    retry_budget_s: float = env("CLIPSEARCH_RETRY_BUDGET", 90.0, number)
    # Folders where a folder-ingested result's relative `path` is looked up for its thumbnail.
    photo_dirs: tuple[str, ...] = env("CLIPSEARCH_PHOTO_DIRS", (), path_list)
