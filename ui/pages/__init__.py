"""One module per page (a FastAPI router each)."""
