"""An example third-party techbench plugin package (see specs.py for what it registers)."""
