"""CLI command groups; each module has ``register(app: typer.Typer) -> None``."""
