"""Applications of the library, one package each (like ``monai.apps.<task>``): a task's facts live in its package,
and nothing in the library imports an application."""
