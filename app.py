"""The web app: `streamlit run app.py`. A router only: the pages live in pages/, the router in ui/navigation.py."""

from ui.navigation import run_app

run_app()
