"""CLI sub-commands. Each module exposes `register(app)` and imports no heavy library at module level."""
