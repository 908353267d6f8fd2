"""Policy: who may call (JWT auth and its keys), how often (rate limits), and the response cache."""
