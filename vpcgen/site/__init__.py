"""Reading a site: its files, schemas, intent, semantic checks and secrets."""
