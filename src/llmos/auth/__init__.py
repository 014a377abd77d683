"""Who may do what: API keys, roles and projects (pure pieces; the gateway applies them)."""
