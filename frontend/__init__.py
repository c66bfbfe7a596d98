"""The Streamlit front-end's logic, testable without Streamlit: API client, query building,
result rendering helpers and thumbnails. `streamlit_app.py` holds only layout and widgets."""
