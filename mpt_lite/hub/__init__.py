"""Checkpoint files: finding them (a folder, the Hugging Face cache, the hub), streaming their
tensors, loading them into a model class (loading.py) and saving a model back (saving.py)."""
