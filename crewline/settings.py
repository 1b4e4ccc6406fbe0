"""One settings object, read from the environment (and an optional `.env`).

Every entry point (worker, API, CLI, tests) builds its own `Settings` and passes it down: there
are no module-level globals, so a test can run several differently-configured parts side by side.
Secrets are `SecretStr`, so they never show up in a repr, a log line or an error message.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from crewline.sandbox import Limits

ProviderName = Literal["groq", "openai", "scripted"]


class ConfigurationError(Exception):
    """Configuration that cannot work; the message says what to set."""


class ModelPrice(BaseModel):
    """A model's price per million tokens (a `MODEL_PRICES` entry)."""

    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(ge=0)


class RateLimit(BaseModel):
    """A provider model's limits (an `LLM_RATE_LIMITS` entry); None: no limit on that axis."""

    model_config = {"extra": "forbid"}

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # --- LLM ---------------------------------------------------------------------------------
    llm_provider: ProviderName | None = Field(default=None, alias="LLM_PROVIDER")
    groq_api_key: SecretStr | None = Field(default=None, alias="GROQ_API_KEY")
    groq_base_url: str | None = Field(default=None, alias="GROQ_BASE_URL")
    groq_model: str = Field(default="llama-3.3-70b-versatile", alias="GROQ_MODEL")
    llm_base_url: str | None = Field(default=None, alias="LLM_BASE_URL")
    llm_api_key: SecretStr | None = Field(default=None, alias="LLM_API_KEY")
    llm_model: str | None = Field(default=None, alias="LLM_MODEL")
    # Per-agent model override, e.g. AGENT_MODELS='{"researcher": "llama-3.1-8b-instant"}'.
    agent_models: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, alias="AGENT_MODELS"
    )
    llm_timeout_s: float = Field(default=120.0, alias="LLM_TIMEOUT_S", gt=0)
    # Per model, JSON: {"llama-3.1-8b-instant": 30}. A call cut off at its timeout may still be
    # billed: it is charged its worst case, labelled estimated (cut off by timeout).
    llm_timeouts: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, alias="LLM_TIMEOUTS"
    )
    llm_max_tokens: int = Field(default=2048, alias="LLM_MAX_TOKENS", gt=0)
    llm_temperature: float = Field(default=0.2, alias="LLM_TEMPERATURE", ge=0, le=2)
    # Full-jitter exponential backoff between attempts of a transient failure.
    retry_base_s: float = Field(default=1.0, alias="LLM_RETRY_BASE_S", ge=0)
    retry_cap_s: float = Field(default=30.0, alias="LLM_RETRY_CAP_S", ge=0)
    retry_jitter_seed: int | None = Field(default=None, alias="RETRY_JITTER_SEED")
    # Temporal's retry budget per agent step: attempts and total time (an open breaker's
    # fail-fast attempts count too, so leave room to wait one out).
    llm_max_attempts: int = Field(default=10, alias="LLM_MAX_ATTEMPTS", ge=1)
    llm_step_timeout_s: float = Field(default=1800.0, alias="LLM_STEP_TIMEOUT_S", gt=0)
    breaker_threshold: int = Field(default=5, alias="BREAKER_FAILURE_THRESHOLD", ge=1)
    breaker_open_s: float = Field(default=30.0, alias="BREAKER_OPEN_S", gt=0)
    # Provider rate limits, kept across all workers of the deployment (activities/ratelimit.py):
    # GROQ_RATE_LIMIT requests per minute for every Groq model; LLM_RATE_LIMITS per model, JSON:
    # {"llama-3.3-70b-versatile": {"requests_per_minute": 30, "tokens_per_minute": 12000}}.
    groq_rate_limit: int | None = Field(default=None, alias="GROQ_RATE_LIMIT", gt=0)
    llm_rate_limits: Annotated[dict[str, RateLimit], NoDecode] = Field(
        default_factory=dict, alias="LLM_RATE_LIMITS"
    )
    # The window the limits count in (a minute; tests shorten it).
    rate_limit_window_s: float = Field(default=60.0, alias="RATE_LIMIT_WINDOW_S", gt=0)
    # The longest one attempt of a step waits for a slot; past it, Temporal retries the step
    # once the slot is due (that uses an attempt).
    rate_limit_max_wait_s: float = Field(default=120.0, alias="RATE_LIMIT_MAX_WAIT_S", gt=0)
    # --- costs ---------------------------------------------------------------------------------
    # Explicit prices for models genai-prices does not know (local / OpenAI-compatible), per
    # million tokens: MODEL_PRICES='{"llama3.1": {"input_per_mtok": "0", "output_per_mtok": "0"}}'
    model_prices: Annotated[dict[str, ModelPrice], NoDecode] = Field(
        default_factory=dict, alias="MODEL_PRICES"
    )
    default_budget_usd: Decimal = Field(default=Decimal("1.00"), alias="DEFAULT_BUDGET_USD", gt=0)
    max_budget_usd: Decimal = Field(default=Decimal("100"), alias="MAX_BUDGET_USD", gt=0)
    # Shrink a call's max_tokens to fit the budget only if at least this many remain.
    budget_min_tokens: int = Field(default=256, alias="BUDGET_MIN_TOKENS", ge=1)
    on_budget_exhausted: Literal["stop", "wait"] = Field(
        default="stop", alias="ON_BUDGET_EXHAUSTED"
    )
    # Shadow runs (a candidate version re-running sampled runs in dry-run) spend at most this
    # much per UTC day, apart from any user's budget.
    shadow_daily_cap_usd: Decimal = Field(
        default=Decimal("1.00"), alias="SHADOW_DAILY_CAP_USD", ge=0
    )
    # The divergence detector (versioning/divergence): a shadow pair alerts when its score —
    # Π(1 - confidence) over what the layers found, 1.0 = nothing found — falls below this.
    divergence_threshold: float = Field(default=0.85, alias="DIVERGENCE_THRESHOLD", gt=0, le=1)
    # Layer 4, an LLM reading both answers: "auto" = on when a real provider is configured (not
    # `scripted`), "llm" = on, "off" = layers 1-3 only. Its calls are shadow spend, under the cap.
    divergence_judge: Literal["auto", "llm", "off"] = Field(
        default="auto", alias="DIVERGENCE_JUDGE"
    )
    # The judge's model (default: the Finalizer's).
    divergence_judge_model: str | None = Field(default=None, alias="DIVERGENCE_JUDGE_MODEL")
    # Every run of this deployment records side-effect intents instead of acting.
    dry_run: bool = Field(default=False, alias="DRY_RUN")
    # Delay the scripted provider adds per call (demos of progress, benchmarks).
    scripted_delay_s: float = Field(default=0.3, alias="SCRIPTED_DELAY_S", ge=0)

    # How long a step's database write waits out an unavailable database (locked, restarting,
    # full) before its attempt fails and Temporal retries it (activities/persist.py). An answered
    # call's usage is kept this long; the activity's 5-minute start-to-close bounds it.
    db_patience_s: float = Field(default=240.0, alias="DB_PATIENCE_S", gt=0, le=280)
    # How often the reconciler makes the database agree with Temporal (services/reconcile.py).
    reconcile_every_s: float = Field(default=10.0, alias="RECONCILE_EVERY_S", gt=0)

    # --- agents -------------------------------------------------------------------------------
    # A cap on every agent's model turns (each agent's spec has its own max_turns, which this
    # lowers); 0: the specs decide.
    max_turns: int = Field(default=0, alias="MAX_TURNS", ge=0, le=50)
    # fetch_url: per request, the most it downloads, and whether it may reach private,
    # loopback and link-local addresses (never, by default; tests and private deployments).
    fetch_timeout_s: float = Field(default=10.0, alias="FETCH_TIMEOUT_S", gt=0)
    fetch_max_bytes: int = Field(default=2_000_000, alias="FETCH_MAX_BYTES", ge=1024)
    fetch_allow_private: bool = Field(default=False, alias="FETCH_ALLOW_PRIVATE")

    # --- the sandbox (crewline/sandbox.py): limits per command ----------------------------
    sandbox_wall_s: float = Field(default=60.0, alias="SANDBOX_WALL_S", gt=0, le=3600)
    sandbox_cpu_s: int = Field(default=30, alias="SANDBOX_CPU_S", gt=0)
    sandbox_memory_mb: int = Field(default=1024, alias="SANDBOX_MEMORY_MB", ge=64)
    sandbox_processes: int = Field(default=64, alias="SANDBOX_PROCESSES", ge=4)
    sandbox_output_bytes: int = Field(default=200_000, alias="SANDBOX_OUTPUT_BYTES", ge=1024)
    # Rounds of acceptance checks the Coder gets: a failed round with rounds left goes back to it
    # to repair (0: the checks are not run).
    check_rounds: int = Field(default=3, alias="CHECK_ROUNDS", ge=0, le=10)
    # Tools whose every call waits for a person's approval in this deployment (besides the tools
    # registered `requires_approval`), e.g. APPROVAL_REQUIRED_TOOLS=write_file,run_command; and
    # how long a call waits before it is denied as "approval timed out".
    approval_required_tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="APPROVAL_REQUIRED_TOOLS"
    )
    approval_timeout_s: float = Field(
        default=86_400.0, alias="APPROVAL_TIMEOUT_S", gt=0, le=30 * 86_400
    )

    # --- research ----------------------------------------------------------------------------
    search_backend: Literal["ddgs", "none"] = Field(default="ddgs", alias="SEARCH_BACKEND")
    search_timeout_s: int = Field(default=8, alias="SEARCH_TIMEOUT_S", gt=0)
    search_max_results: int = Field(default=5, alias="SEARCH_MAX_RESULTS", gt=0)

    # --- storage & services --------------------------------------------------------------------
    data_dir: Path = Field(default=Path(".crewline"), alias="CREWLINE_DATA_DIR")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    # Default: the embedded server's, 127.0.0.1:TEMPORAL_PORT (as the API's URL follows API_PORT).
    temporal_address: str = Field(default="127.0.0.1:7233", alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE")
    task_queue: str = Field(default="crewline-pipeline", alias="CREWLINE_TASK_QUEUE")
    # Temporal Worker Deployment the versioned workers register in (versions are its build ids).
    deployment_name: str = Field(
        default="crewline", alias="CREWLINE_DEPLOYMENT", pattern=r"^[A-Za-z0-9_-]{1,100}$"
    )
    # How often workers tell Temporal they are alive; activation checks a version has one. A
    # new worker is listed after its first beat, one interval after it starts.
    worker_heartbeat_s: float = Field(default=2.0, alias="WORKER_HEARTBEAT_S", ge=1, le=60)
    temporal_port: int = Field(default=7233, alias="TEMPORAL_PORT")
    temporal_ui_port: int = Field(default=8233, alias="TEMPORAL_UI_PORT")
    api_host: str = Field(default="127.0.0.1", alias="API_HOST")
    api_port: int = Field(default=8000, alias="API_PORT")
    api_url: str | None = Field(default=None, alias="CREWLINE_API_URL")

    # --- API security -------------------------------------------------------------------------
    # The key the CLI sends (else CREWLINE_ADMIN_KEY, else the data directory's admin.key).
    api_key: SecretStr | None = Field(default=None, alias="CREWLINE_API_KEY")
    # Sets the admin key explicitly instead of the one `crewline up` generates.
    admin_key: SecretStr | None = Field(default=None, alias="CREWLINE_ADMIN_KEY")
    key_max_inflight: int = Field(default=20, alias="KEY_MAX_RUNS_IN_FLIGHT", ge=1)
    key_runs_per_minute: int = Field(default=60, alias="KEY_RUNS_PER_MINUTE", ge=1)
    # Host headers the API answers; default: the localhost names when bound to loopback, else any.
    # A version uploaded as a zip (POST /versions, admin keys) is code that runs on the workers:
    # `crewline up` starts workers for it only when this is true.
    allow_uploaded_bundles: bool = Field(default=False, alias="ALLOW_UPLOADED_BUNDLES")
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        default=None, alias="ALLOWED_HOSTS"
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="ALLOWED_ORIGINS"
    )
    max_request_bytes: int = Field(default=64 * 1024, alias="MAX_REQUEST_BYTES", ge=1024)
    # A request body must arrive within this (else 408); at most this many connections are
    # served at once (uvicorn answers 503 past it). Slow *headers* need a proxy in front.
    # The original description's feature flags. Versioning off: `up` runs unversioned workers,
    # nothing is snapshotted, shadowed or activated (those routes answer 409). Cost tracking off:
    # tokens are still counted, nothing is priced (every row $0), and a budget is refused.
    versioning_enabled: bool = Field(default=True, alias="VERSIONING_ENABLED")
    cost_tracking_enabled: bool = Field(default=True, alias="COST_TRACKING_ENABLED")
    # Snapshots kept at most (each is a zip on disk and a registry row).
    max_versions: int = Field(default=200, alias="MAX_VERSIONS", ge=2)
    request_body_timeout_s: float = Field(default=30.0, alias="REQUEST_BODY_TIMEOUT_S", gt=0)
    api_max_connections: int = Field(default=4096, alias="API_MAX_CONNECTIONS", ge=10)

    # --- observability ---------------------------------------------------------------------
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    log_json: bool = Field(default=False, alias="LOG_JSON")
    # Traces go out over OTLP/HTTP when either endpoint is set (the standard OTel variables).
    otel_endpoint: str | None = Field(default=None, alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_traces_endpoint: str | None = Field(
        default=None, alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    # Default per process: crewline-api, crewline-worker.
    otel_service_name: str | None = Field(default=None, alias="OTEL_SERVICE_NAME")
    # Prompts and outputs in span attributes (truncated, redacted); off by default.
    trace_content: bool = Field(default=False, alias="TRACE_CONTENT")
    # Jaeger's UI, for a run's trace link (e.g. http://localhost:16686).
    jaeger_ui_url: str | None = Field(default=None, alias="JAEGER_UI_URL")
    # A worker's Prometheus /metrics (crewline's and the Temporal SDK's); 0 turns it off.
    # `crewline up` gives its worker processes this port and the ones after it.
    worker_metrics_port: int = Field(default=9464, alias="WORKER_METRICS_PORT", ge=0, le=65535)
    # Where the worker's metrics endpoint listens (0.0.0.0 in containers).
    worker_metrics_host: str = Field(default="127.0.0.1", alias="WORKER_METRICS_HOST")

    @field_validator(
        "agent_models", "model_prices", "llm_rate_limits", "llm_timeouts", mode="before"
    )
    @classmethod
    def _parse_json(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    'must be JSON, e.g. AGENT_MODELS=\'{"coder": "llama-3.3-70b-versatile"}\''
                ) from exc
        return value

    @field_validator("allowed_hosts", "allowed_origins", "approval_required_tools", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):  # ALLOWED_HOSTS=a.example,b.example (or a JSON list)
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("admin_key", "api_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("an API key must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _temporal_address_follows_the_port(self) -> Settings:
        if "temporal_address" not in self.model_fields_set:
            self.temporal_address = f"127.0.0.1:{self.temporal_port}"
        return self

    # --- derived -------------------------------------------------------------------------------
    def sandbox_limits(self) -> Limits:
        return Limits(
            wall_s=self.sandbox_wall_s, cpu_s=self.sandbox_cpu_s, memory_mb=self.sandbox_memory_mb,
            processes=self.sandbox_processes, output_bytes=self.sandbox_output_bytes,
        )  # fmt: skip

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'crewline.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def resolved_allowed_hosts(self) -> list[str]:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        if self.api_host in ("127.0.0.1", "localhost", "::1"):
            return ["localhost", "127.0.0.1", "[::1]", "::1"]
        return ["*"]

    def secrets(self) -> list[str]:
        """The secret values configured here (for redaction; never to be logged)."""
        keys = (self.groq_api_key, self.llm_api_key, self.api_key, self.admin_key)
        return [k.get_secret_value() for k in keys if k is not None]

    def judge_enabled(self) -> bool:
        """Whether divergence layer 4 (the LLM judge) runs: on by default with a real model."""
        if self.divergence_judge == "auto":
            try:
                return self.provider() != "scripted"
            except ConfigurationError:
                return False
        return self.divergence_judge == "llm"

    def provider(self) -> ProviderName:
        """The provider to use, or a `ConfigurationError` that says what to set."""
        if self.llm_provider is not None:
            if self.llm_provider == "groq" and self.groq_api_key is None:
                raise ConfigurationError(
                    "LLM_PROVIDER=groq needs GROQ_API_KEY (get one at console.groq.com)."
                )
            if self.llm_provider == "openai" and not self.llm_base_url:
                raise ConfigurationError(
                    "LLM_PROVIDER=openai needs LLM_BASE_URL, e.g. http://localhost:11434/v1 "
                    "for Ollama, and LLM_MODEL."
                )
            return self.llm_provider
        if self.groq_api_key is not None:
            return "groq"
        raise ConfigurationError(
            "No LLM provider configured. Set GROQ_API_KEY=<your key> to use Groq, or "
            "LLM_PROVIDER=openai with LLM_BASE_URL/LLM_MODEL for a local OpenAI-compatible "
            "server, or LLM_PROVIDER=scripted for the offline demo provider (canned answers)."
        )
