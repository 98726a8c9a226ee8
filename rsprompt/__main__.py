"""``python -m rsprompt`` runs the ``rsprompt`` command."""

from rsprompt.cli import main

if __name__ == "__main__":
    main()
