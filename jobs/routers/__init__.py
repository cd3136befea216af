"""The gateway's routes, one router per concern: submit (POST /generate), jobs (one job, its events, its image,
the caller's recent jobs), service (queue, health, metrics, the web page)."""
