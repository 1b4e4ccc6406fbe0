# One image for the API and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cli cli
COPY crewline crewline
COPY workflows workflows
COPY activities activities
COPY api api
COPY workers workers
COPY versioning versioning
COPY costs costs
RUN pip install --no-cache-dir '.[postgres]'
ENV CREWLINE_DATA_DIR=/data
VOLUME /data
CMD ["crewline", "api"]
