"""Function tools offered to the model: one module per tool, a registry that runs them safely.

Imports nothing else from `service/`: the application builds a `ToolConfig` from its settings
and calls `ToolRegistry.from_config(config, http_client)` once at start.
"""

from service.redaction import redact_http_logs
from service.tools.registry import (
    ALL_TOOLS,
    ToolCall,
    ToolRegistry,
    ToolResult,
    fit_output,
    parameters_schema,
)
from service.tools.tool import JSONObject, NoArgs, Tool, ToolConfig, ToolContext, ToolError

__all__ = [
    "ALL_TOOLS",
    "JSONObject",
    "NoArgs",
    "Tool",
    "ToolCall",
    "ToolConfig",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "fit_output",
    "parameters_schema",
    "redact_http_logs",
]
