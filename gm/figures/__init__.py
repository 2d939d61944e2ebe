"""Small, deterministic demonstrations of what the theory predicts (each a pure `run` and a thin `main`)."""
