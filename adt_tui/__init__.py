"""adt monitor and command line: supervisor, headless runner, Textual app."""
