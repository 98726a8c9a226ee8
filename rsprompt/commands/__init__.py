"""Click commands of the ``rsprompt`` CLI, one module each (thin shells over the library)."""
