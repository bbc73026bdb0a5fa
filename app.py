"""The web app: `streamlit run app.py`. A router only; each page lives in pages/."""

from pathlib import Path

import streamlit as st

from ui.auth import require_password
from ui.state import keep_widget_values, session_id

st.set_page_config(page_title="Ask your documents", page_icon=":material/forum:", layout="wide")
require_password()
session_id()
keep_widget_values()

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/upload.py", title="Upload", icon=":material/upload_file:"),
    st.Page("pages/documents.py", title="Documents", icon=":material/folder_open:"),
    st.Page("pages/chat.py", title="Chat", icon=":material/forum:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("pages/settings.py", title="Settings", icon=":material/settings:"),
]
if (Path(__file__).parent / "pages" / "benchmarks.py").exists():
    pages.insert(4, st.Page("pages/benchmarks.py", title="Benchmarks", icon=":material/speed:"))

st.navigation(pages).run()
