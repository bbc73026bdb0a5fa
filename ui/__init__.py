"""The Streamlit side: cached resources, session keys and shared renderers for the pages.

Imports flow one way: pages → ui → rag. Nothing in `rag` imports from here.
"""

from ui.state import ensure_router

ensure_router()  # the first import happens inside a page's first run; see ensure_router
