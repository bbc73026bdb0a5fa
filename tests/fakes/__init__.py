"""Real protocol peers for what cannot run here."""
