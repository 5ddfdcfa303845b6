"""Run an Argo CD Lua health check as Argo CD does: the object as the global `obj`, the
script's returned table read for `status` and `message`. Lua comes from `lupa`: a real Lua 5.1,
the language version of gopher-lua, which Argo CD embeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qatvm.paths import project_root

HEALTH_SCRIPT = project_root() / "manifests" / "argocd" / "health.lua"
# Argo CD's sandbox opens only these standard libraries to health scripts.
SAFE_GLOBALS = ("ipairs", "pairs", "tostring", "tonumber", "type", "next", "select", "string", "table", "math")


@dataclass(frozen=True)
class Health:
    status: str
    message: str


def _lua_value(lua: Any, value: Any) -> Any:
    # JSON objects become tables, arrays 1-based tables, null nil: what Argo CD hands a script.
    if isinstance(value, dict):
        return lua.table_from({k: _lua_value(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_lua_value(lua, v) for v in value])
    return value


def health(obj: dict[str, Any], script: Path = HEALTH_SCRIPT) -> Health:
    try:
        import lupa.lua51 as lupa
    except ImportError as error:  # pragma: no cover - the test extra installs it
        raise RuntimeError("the Argo CD health tests need the Python package `lupa` (pip install lupa)") from error
    lua = lupa.LuaRuntime(register_eval=False)
    sandbox = lua.table_from({name: lua.globals()[name] for name in SAFE_GLOBALS})
    sandbox.obj = _lua_value(lua, obj)
    run = lua.eval("function(source, env) local chunk = assert(loadstring(source, 'health.lua')); setfenv(chunk, env); return chunk() end")
    result = run(script.read_text(), sandbox)
    return Health(status=str(result["status"]), message=str(result["message"] or ""))
