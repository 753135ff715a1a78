"""One module per ``techbench`` sub-command (see ``techbench.cli``)."""
