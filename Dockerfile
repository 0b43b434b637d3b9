# Image for docker-compose.yml: the worker with the repository's sql/ and contracts/ beside it.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY exchange_stream ./exchange_stream
COPY web ./web
COPY sql ./sql
COPY contracts ./contracts
RUN pip install --no-cache-dir -e .
EXPOSE 8080
CMD ["exchange-stream", "worker"]
