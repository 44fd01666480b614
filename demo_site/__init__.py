"""kvstate's workbench: a small Django project that runs real XBlocks on kvstate in a browser.

Not part of the reusable ``kvstate`` package. ``./demo serve`` migrates it and serves it on
127.0.0.1:8000; ``./demo`` runs its scripted, self-checking demo (``manage.py kvstate_demo``).
"""
