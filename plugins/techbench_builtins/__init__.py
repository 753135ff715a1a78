"""techbench's built-in techniques, datasets and models.

Registered through the root ``pyproject.toml``'s entry points, exactly like a third-party
package. Each family has two modules: ``<family>.py`` holds the specs (light metadata, imported
by ``techbench list``) and ``<family>_impl.py`` holds the fast implementations and the references
written from the math (imported on first use, since importing torch costs about 2 s).
"""
