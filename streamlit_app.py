"""clipsearch front-end: `streamlit run streamlit_app.py`.

Only layout and widgets live here; the API client (with its cold-start retry budget), query
building, card text and thumbnails are in `frontend/`. Settings: CLIPSEARCH_API_URL (full URL of
POST /search), CLIPSEARCH_API_KEY (sent as x-api-key) and CLIPSEARCH_RETRY_BUDGET, from the
environment or, where unset there, from Streamlit secrets (.streamlit/secrets.toml).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import streamlit as st

from frontend import render
from frontend.client import RetryBudget, SearchClient, SearchFailed, SearchRequest
from frontend.config import FrontendSettings
from frontend.query import ORIENTATIONS, UPLOAD_TYPES, BadQuery, filters_for, image_request, text_request, url_request
from frontend.thumbs import placeholder, thumbs_for

SECRET_NAMES = ("CLIPSEARCH_API_URL", "CLIPSEARCH_API_KEY", "CLIPSEARCH_RETRY_BUDGET")
MODES = ("Text", "Image upload", "Image URL")
PER_ROW = 4
# Cards of one height whatever the photos' shapes: crop to 4:3 in the grid (the full photo is a
# click away on its page).
GRID_CSS = """<style>
[data-testid="stColumn"] [data-testid="stImage"] img {aspect-ratio: 4 / 3; object-fit: cover; border-radius: 6px;}
</style>"""


def api_settings() -> FrontendSettings:
    """Environment first; Streamlit secrets fill what the environment leaves unset."""
    env = dict(os.environ)
    try:
        for name in SECRET_NAMES:
            if not env.get(name) and st.secrets.get(name):
                env[name] = str(st.secrets[name])
    except FileNotFoundError:  # no secrets.toml: the environment alone decides
        pass
    return FrontendSettings.from_env(env)


def client_for(settings: FrontendSettings) -> SearchClient:
    """One client (and HTTP connection pool) per browser session, rebuilt if the settings change."""
    key = (settings.api_url, settings.api_key, settings.retry_budget_s)
    if st.session_state.get("client_key") != key:
        policy = RetryBudget(budget_s=settings.retry_budget_s)
        st.session_state["client"] = SearchClient(settings.api_url, settings.api_key, policy=policy)
        st.session_state["client_key"] = key
    return st.session_state["client"]


def more_like(doc_id: str, label: str) -> None:
    st.session_state["more_like"] = (doc_id, label)


def sidebar(settings: FrontendSettings) -> dict[str, Any]:
    with st.sidebar:
        st.header("Options")
        k = st.slider("Number of results", 1, 100, 12, key="k")
        orientation = st.selectbox("Orientation", ("any",) + ORIENTATIONS, key="orientation")
        min_score = st.slider("Minimum score", 0.0, 1.0, 0.0, 0.01, key="min_score",
                              help="Cosine similarity; 0 shows every result.")
        st.caption(f"API: {settings.api_url}")
    return {"k": k, "filters": filters_for(None if orientation == "any" else orientation),
            "min_score": min_score or None}


def query_form(opts: dict[str, Any]) -> SearchRequest | None:
    """The request the user submitted this run, if any; a BadQuery shows what to fix."""
    mode = st.radio("Search by", MODES, horizontal=True, key="mode", label_visibility="collapsed")
    with st.form("query"):
        if mode == "Text":
            value = st.text_input("Describe the photo", placeholder="two dogs on a beach", key="text")
        elif mode == "Image upload":
            value = st.file_uploader("A photo to find similar ones", type=list(UPLOAD_TYPES), key="upload")
        else:
            value = st.text_input("Image URL", placeholder="https://images.unsplash.com/photo-…", key="url")
        submitted = st.form_submit_button("Search", type="primary")
    if not submitted:
        return None
    try:
        if mode == "Text":
            return text_request(value, **opts)
        if mode == "Image upload":
            return image_request(value.getvalue() if value is not None else None, **opts)
        return url_request(value, **opts)
    except BadQuery as exc:
        st.warning(str(exc))
        return None


def run_search(client: SearchClient, request: SearchRequest, label: str | None = None) -> dict[str, Any]:
    notice = st.empty()

    def on_wait(attempt: int, delay: float, why: str) -> None:
        notice.info(render.warming_message(attempt), icon="⏳")

    try:
        with st.spinner("Searching…"):
            response = client.search(request, on_wait=on_wait)
            thumbs = thumbs_for(response.results, client.session)
    except SearchFailed as exc:
        return {"request": request, "error": str(exc)}
    finally:
        notice.empty()
    return {"request": request, "response": response, "thumbs": thumbs, "label": label}


def card(result: dict[str, Any], thumb, n: int) -> None:
    alt = result.get("description") or f"result {n + 1}"
    if thumb.ok:
        st.image(thumb.url if thumb.url else thumb.image, width="stretch", alt=str(alt)[:200])
    else:
        st.image(placeholder(), width="stretch", alt="image unavailable")
        st.caption(f"Image unavailable: {thumb.problem}")
    st.markdown(f"**{render.score_text(result.get('score'))}**")
    credit = render.attribution(result)
    if credit:
        st.caption(credit)
    st.button("More like this", key=f"more-{n}", on_click=more_like,
              args=(str(result["id"]), render.photo_label(result)))


def show(outcome: dict[str, Any]) -> None:
    request: SearchRequest = outcome["request"]
    if "error" in outcome:
        st.error(outcome["error"])
        return
    response = outcome["response"]
    if response.warning:
        st.warning(response.warning, icon="⚠️")
    note = render.retried_note(response.attempts, response.elapsed_s)
    if note:
        st.caption(note)
    st.subheader(render.describe(request, outcome.get("label")))
    if request.input_type in ("image", "url"):  # the query photo, small, above its neighbours
        st.image(base64.b64decode(request.query) if request.input_type == "image" else request.query,
                 width=160, alt="your query photo")
    if not response.results:
        st.info(render.empty_reason(request))
        return
    timing = render.timing_line(response.took_ms, response.cached)
    count = f"{len(response.results)} result{'s' if len(response.results) != 1 else ''}"
    st.caption(" · ".join(x for x in (count, timing, response.model) if x))
    n = 0
    for row in render.rows(list(zip(response.results, outcome["thumbs"])), PER_ROW):
        for column, (result, thumb) in zip(st.columns(PER_ROW), row):
            with column:
                card(result, thumb, n)
            n += 1


def main() -> None:
    st.set_page_config(page_title="clipsearch", page_icon="🔎", layout="wide")
    st.markdown(GRID_CSS, unsafe_allow_html=True)
    st.title("clipsearch")
    st.caption("Search photos by meaning with OpenAI's CLIP: describe what you are looking for, "
               "or give a photo to find ones like it.")
    try:
        settings = api_settings()
    except ValueError as exc:  # a malformed variable: say which, rather than a traceback
        st.error(f"Configuration error: {exc}")
        st.stop()
    opts = sidebar(settings)
    request = query_form(opts)
    more, label = st.session_state.pop("more_like", (None, None))
    if request is None and more:
        request = SearchRequest(more, "id", **opts)
    if request is not None:
        st.session_state["outcome"] = run_search(client_for(settings), request, label)
    if "outcome" in st.session_state:
        show(st.session_state["outcome"])


main()
