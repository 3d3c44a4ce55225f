"""Attribute names: OpenTelemetry semantic conventions (HTTP, GenAI) and Fathom's own.

Kept as constants so that spans, tests and dashboards agree on one spelling.
"""

from __future__ import annotations

import os

# HTTP server semantic conventions (stable).
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_ROUTE = "http.route"
URL_PATH = "url.path"
URL_SCHEME = "url.scheme"
URL_QUERY = "url.query"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
USER_AGENT = "user_agent.original"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"
ERROR_TYPE = "error.type"

# GenAI semantic conventions.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_PROMPT = "gen_ai.prompt"
GEN_AI_COMPLETION = "gen_ai.completion"

# Fathom's own.
FATHOM_TENANT = "fathom.tenant"
FATHOM_REPLICA = "fathom.replica"
FATHOM_REQUEST_ID = "fathom.request_id"
FATHOM_CACHED_TOKENS = "fathom.cached_tokens"
FATHOM_TTFT = "fathom.ttft"
FATHOM_SPEC_DRAFT_TOKENS = "fathom.spec_decode.draft_tokens"  # drafts verified for the request (MTP)
FATHOM_SPEC_ACCEPTED_TOKENS = "fathom.spec_decode.accepted_tokens"  # ... and accepted
FATHOM_SPEC_ACCEPTANCE_RATE = "fathom.spec_decode.acceptance_rate"  # accepted / verified
FATHOM_QUEUE_TIME = "fathom.queue_time"
FATHOM_PREFILL_CHUNKS = "fathom.prefill.chunks"
FATHOM_DECODE_TOKENS = "fathom.decode.tokens"
FATHOM_RANK = "fathom.rank"
FATHOM_WORLD_SIZE = "fathom.world_size"
FATHOM_BATCH_SEQS = "fathom.batch.num_seqs"
FATHOM_BATCH_TOKENS = "fathom.batch.num_tokens"
FATHOM_STEP = "fathom.step"
FATHOM_LIMIT = "fathom.limit"
FATHOM_ERROR_CODE = "fathom.error_code"
FATHOM_COMPONENT = "fathom.component"

# Prompt and completion text are personal data: recorded only when explicitly enabled.
RECORD_CONTENT_ENV = "FATHOM_TRACE_RECORD_CONTENT"
_TRUE = {"1", "true", "yes", "on"}


def record_content_enabled() -> bool:
    """Whether spans may carry prompt/completion text (``FATHOM_TRACE_RECORD_CONTENT=true``)."""
    return os.environ.get(RECORD_CONTENT_ENV, "").strip().lower() in _TRUE
