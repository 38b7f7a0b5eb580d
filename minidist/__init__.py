"""minidist package."""
