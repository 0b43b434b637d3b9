"""aiohttp views and middleware served by the worker's web server."""
