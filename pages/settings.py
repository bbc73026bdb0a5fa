"""Settings: the effective configuration, with secrets masked."""

import streamlit as st

from rag import RagError, load_settings
from ui.errors import show_error
from ui.navigation import ensure_routed, require_admin_when_accounts
from ui.settings import settings_table

ensure_routed()
require_admin_when_accounts()

st.title("Settings")
st.caption(
    "The settings in effect. Change them with environment variables or a `.env` file in the working "
    "directory, then restart the app. Secrets are never shown."
)
try:
    settings = load_settings()
except RagError as err:
    show_error(err)
    st.stop()

st.table(settings_table(settings), hide_index=True)  # a static table: long descriptions wrap, none is cut
