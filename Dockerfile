# One image for the API and the workers (docker-compose.yml picks the command). Built from
# pyproject.toml with the PostgreSQL driver and no dev dependencies; runs as a non-root user.
# Secrets come from the environment at run time (.dockerignore keeps .env out of the build).
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 crewline && mkdir /data && chown crewline:crewline /data
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
COPY dashboard dashboard
RUN pip install --no-cache-dir '.[postgres]'
USER crewline
ENV CREWLINE_DATA_DIR=/data
VOLUME /data
EXPOSE 8000 9464
CMD ["crewline", "api"]
