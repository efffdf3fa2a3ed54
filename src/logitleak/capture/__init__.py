"""One forward or generate pass with hooks -> Capture; the activation store and its reader."""
