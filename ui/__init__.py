"""The Streamlit side: cached resources, session keys and shared renderers for the pages.

Imports flow one way: pages → ui → rag. Nothing in `rag` imports from here.
"""
