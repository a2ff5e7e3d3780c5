#!/usr/bin/env python3
"""Drives a shardmcp server with the official MCP Python SDK client (PyPI `mcp` 2.x).

Prints one JSON line per scenario step, e.g.
  {"client": "py-sdk", "sdk": "2.3.0", "era": "2026-07-28", "transport": "http", "step": "tools/call:add", "ok": true, ...}
A failed step prints "ok": false with "error"; the exit status is 1 when any
step failed (2 for bad usage).

Usage:
  py_client.py --mode 2026-07-28|legacy --transport http --url http://127.0.0.1:PORT/mcp [--steps a,b,...]
  py_client.py --mode ... --transport stdio --command /path/to/shardmcp [ARG...]   (once `serve --stdio` exists)
  py_client.py --list-steps
--mode 2026-07-28 speaks the stateless revision (no handshake; client input
as InputRequiredResult rounds); --mode legacy runs the initialize handshake
(client input as server-to-client requests). --steps runs only the named
steps (in scenario order); "connect" always runs.

The scenario does not depend on the transport: only `connect()` does. To add
one (e.g. a resumed SSE stream), add a branch there and, for a step that
only makes sense on it, a step with `transports=(...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.subscriptions import ResourceUpdated
from mcp.shared.exceptions import MCPError

# The deprecated-but-served handshake-era calls (ping, setLevel) are tested on purpose.
warnings.simplefilter("ignore")

MODERN = "2026-07-28"
# How long the cancelled call would run: four steps, progress after each.
# A server that ran it on to its end is caught by the tally (see step_cancel).
CANCELLED_MS = 8000


class StepFailure(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailure(message)


def same(actual: Any, wanted: Any, what: str) -> None:
    expect(actual == wanted, f"{what}: got {actual!r}, wanted {wanted!r}")


@dataclass
class Seen:
    """What the client's callbacks saw; the steps read it."""

    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    elicitations: list[Any] = field(default_factory=list)
    samplings: list[types.CreateMessageRequestParams] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


@dataclass
class Ctx:
    client: Client
    client_args: argparse.Namespace
    mode: str
    seen: Seen

    @property
    def modern(self) -> bool:
        return self.mode == MODERN


@dataclass
class Step:
    name: str
    run: Callable[[Ctx], Awaitable[dict[str, Any]]]
    modes: tuple[str, ...] = ("legacy", MODERN)
    transports: tuple[str, ...] = ("http", "stdio")


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    expect(isinstance(block, types.TextContent), f"first block is {type(block).__name__}, not text")
    return block.text


async def step_tools_list(ctx: Ctx) -> dict[str, Any]:
    page = await ctx.client.list_tools()
    names = [tool.name for tool in page.tools]
    for wanted in ("echo", "add", "slow", "test_sampling", "test_elicitation"):
        expect(wanted in names, f"tools/list lacks {wanted}: {names}")
    add = next(tool for tool in page.tools if tool.name == "add")
    same((add.output_schema or {}).get("required"), ["sum"], "add's outputSchema.required")
    details: dict[str, Any] = {"tools": len(names), "first": names[:4]}
    if ctx.modern:
        # 2026-07-28 list results are cacheable: they carry ttlMs and cacheScope.
        details["ttlMs"] = page.ttl_ms
        details["cacheScope"] = page.cache_scope
    return details


async def step_echo(ctx: Ctx) -> dict[str, Any]:
    result = await ctx.client.call_tool("echo", {"text": "héllo ✓"})
    same(text_of(result), "héllo ✓", "echo text")
    return {"text": text_of(result), "isError": result.is_error}


async def step_add(ctx: Ctx) -> dict[str, Any]:
    result = await ctx.client.call_tool("add", {"a": 2, "b": 40})
    same(result.structured_content, {"sum": 42}, "add structuredContent")
    return {"sum": result.structured_content["sum"]}


async def step_invalid_arguments(ctx: Ctx) -> dict[str, Any]:
    # Arguments that break the input schema: a JSON-RPC error, not a result.
    try:
        await ctx.client.call_tool("add", {"a": "two"})
    except MCPError as error:
        same(error.code, -32602, "error code")
        return {"code": error.code}
    raise StepFailure("add with a string argument was not refused")


async def step_resources_list(ctx: Ctx) -> dict[str, Any]:
    resources = await ctx.client.list_resources()
    uris = [str(resource.uri) for resource in resources.resources]
    expect("demo://readme" in uris and "demo://pixel.png" in uris, f"resources: {uris}")
    templates = await ctx.client.list_resource_templates()
    patterns = [template.uri_template for template in templates.resource_templates]
    expect("demo://notes/{name}" in patterns, f"templates: {patterns}")
    return {"uris": uris, "templates": patterns}


async def step_resources_read(ctx: Ctx) -> dict[str, Any]:
    readme = await ctx.client.read_resource("demo://readme")
    readme_text = readme.contents[0].text
    expect(readme_text.startswith("shardmcp demo server"), f"readme: {readme_text!r}")
    pixel = await ctx.client.read_resource("demo://pixel.png")
    same(pixel.contents[0].mime_type, "image/png", "pixel mimeType")
    png = base64.b64decode(pixel.contents[0].blob)
    same(png[1:4], b"PNG", "pixel magic")
    note = await ctx.client.read_resource("demo://notes/alpha")
    same((str(note.contents[0].uri), note.contents[0].text), ("demo://notes/alpha", "note alpha"), "note")
    missing = None
    try:
        await ctx.client.read_resource("demo://nothing-here")
    except MCPError as error:
        missing = error.code
    # 2026-07-28 retired -32002: a missing resource is -32602 there.
    same(missing, -32602 if ctx.modern else -32002, "missing resource error code")
    return {"readme": len(readme_text), "pngBytes": len(png), "note": note.contents[0].text, "missing": missing}


async def step_prompts(ctx: Ctx) -> dict[str, Any]:
    prompts = await ctx.client.list_prompts()
    names = [prompt.name for prompt in prompts.prompts]
    expect("greeting" in names and "review" in names, f"prompts: {names}")
    greeting = await ctx.client.get_prompt("greeting", {"name": "Ada"})
    same(len(greeting.messages), 1, "greeting messages")
    same((greeting.messages[0].role, greeting.messages[0].content.text), ("user", "Say hello to Ada."), "greeting")
    review = await ctx.client.get_prompt("review", {"focus": "tone"})
    same(review.messages[0].content.type, "resource", "review's first block")
    same(str(review.messages[0].content.resource.uri), "demo://readme", "embedded resource uri")
    same(review.messages[1].content.text, "Review it for tone.", "review's second block")
    completion = await ctx.client.complete(
        types.PromptReference(type="ref/prompt", name="greeting"), {"name": "name", "value": "A"}
    )
    same(completion.completion.values, ["Ada", "Alan"], "completion values")
    return {
        "greeting": greeting.messages[0].content.text,
        "review": [message.content.type for message in review.messages],
        "completion": completion.completion.values,
    }


async def step_progress_and_logging(ctx: Ctx) -> dict[str, Any]:
    if not ctx.modern:
        # Handshake era: the session's level (2026-07-28 asks per request, via log_level).
        same(await ctx.client.set_logging_level("debug"), types.EmptyResult(), "setLevel result")
    ctx.seen.logs.clear()
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    result = await ctx.client.call_tool("slow", {"ms": 200}, progress_callback=on_progress)
    same(text_of(result), "waited 200 ms", "slow text")
    same(progress, [(1, 4), (2, 4), (3, 4), (4, 4)], "progress")
    logs = [(log.level, log.logger, log.data["step"]) for log in ctx.seen.logs]
    same(logs, [("info", "slow", step) for step in (1, 2, 3, 4)], "logs")
    return {"progress": [value for value, _ in progress], "logs": len(logs), "text": text_of(result)}


async def step_elicitation(ctx: Ctx) -> dict[str, Any]:
    ctx.seen.elicitations.clear()
    result = await ctx.client.call_tool("test_elicitation", {"message": "Who are you?"})
    same(len(ctx.seen.elicitations), 1, "elicitation requests seen")
    asked = ctx.seen.elicitations[0]
    same(asked.message, "Who are you?", "elicitation message")
    same(asked.requested_schema["required"], ["username", "email"], "requested fields")
    text = text_of(result)
    same(text, 'User response: action=accept, content={"email":"py@example.org","username":"py-user"}', "result")
    return {"text": text}


async def step_sampling(ctx: Ctx) -> dict[str, Any]:
    ctx.seen.samplings.clear()
    result = await ctx.client.call_tool("test_sampling", {"prompt": "What is 6x7?"})
    same(len(ctx.seen.samplings), 1, "sampling requests seen")
    same(ctx.seen.samplings[0].messages[0].content.text, "What is 6x7?", "sampled prompt")
    text = text_of(result)
    same(text, "LLM response: py model says: What is 6x7?", "result")
    return {"text": text}


async def step_cancel(ctx: Ctx) -> dict[str, Any]:
    # `slow` results carry a tally of every slow call: running, completed,
    # stopped early. One before, then a call cancelled once it has reported
    # progress (so its handler is surely running), then calls until no other
    # is running: the cancelled one must count as stopped, not completed.
    # The SDK sends notifications/cancelled (handshake era) or drops the
    # request's stream (2026-07-28, where that is the cancellation).
    before = (await ctx.client.call_tool("slow", {"ms": 0})).structured_content
    scope = anyio.CancelScope()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        scope.cancel()

    finished = None
    with scope:
        finished = await ctx.client.call_tool("slow", {"ms": CANCELLED_MS}, progress_callback=on_progress)
    expect(finished is None and scope.cancelled_caught, f"the call was not cancelled: {finished!r}")
    cancelled_at = time.monotonic()
    polls = 0
    while True:
        polls += 1
        after = (await ctx.client.call_tool("slow", {"ms": 0})).structured_content
        if after["othersRunning"] == 0 or time.monotonic() > cancelled_at + 2 * CANCELLED_MS / 1000:
            break
        await anyio.sleep(0.05)
    same(after["othersRunning"], 0, "slow calls still running after the cancellation")
    same(after["stopped"] - before["stopped"], 1, "calls stopped early")
    # The first probe and every poll completed; the cancelled call must not have.
    same(after["completed"] - before["completed"], polls, "calls completed")
    return {"stopped": 1, "polls": polls, "stopSeenAfterMs": round((time.monotonic() - cancelled_at) * 1000)}


async def step_listen(ctx: Ctx) -> dict[str, Any]:
    # 2026-07-28 subscriptions: a listen for one note, then a tool that
    # changes it; the listen stream must carry resources/updated.
    uri = "demo://notes/listened"
    async with ctx.client.listen(resource_subscriptions=[uri]) as subscription:
        same(subscription.honored.resource_subscriptions, [uri], "honoured subscriptions")
        touched = await ctx.client.call_tool("touch_note", {"name": "listened"})
        same(text_of(touched), f"touched {uri}", "touch_note result")
        event = None
        with anyio.move_on_after(5):
            async for event in subscription:
                break
        expect(isinstance(event, ResourceUpdated), f"no resources/updated within 5 s (got {event!r})")
        same(event.uri, uri, "updated uri")
    return {"uri": event.uri}


async def step_subscribe(ctx: Ctx) -> dict[str, Any]:
    # Handshake-era subscriptions: resources/subscribe, then a tool that
    # changes the note; resources/updated must reach the client.
    uri = "demo://notes/subscribed"
    same(await ctx.client.subscribe_resource(uri), types.EmptyResult(), "subscribe result")
    ctx.seen.updated.clear()
    touched = await ctx.client.call_tool("touch_note", {"name": "subscribed"})
    same(text_of(touched), f"touched {uri}", "touch_note result")
    with anyio.move_on_after(5):
        while not ctx.seen.updated:
            await anyio.sleep(0.05)
    same(ctx.seen.updated, [uri], "resources/updated received")
    same(await ctx.client.unsubscribe_resource(uri), types.EmptyResult(), "unsubscribe result")
    return {"uri": uri}


async def step_cancel_quiet(ctx: Ctx) -> dict[str, Any]:
    # 2026-07-28 over HTTP: closing a request's stream is its cancellation,
    # also for a handler that has sent nothing yet (no progress token, no log
    # level, so the server has had no reason to write). A second client that
    # asks for neither makes the quiet call.
    quiet = Client(ctx.client_args.url, mode=MODERN, cache=None, read_timeout_seconds=60)
    async with quiet:
        before = (await quiet.call_tool("slow", {"ms": 0})).structured_content
        with anyio.move_on_after(1) as scope:
            await quiet.call_tool("slow", {"ms": CANCELLED_MS})
        expect(scope.cancelled_caught, "the quiet call ended before it was cancelled")
        cancelled_at = time.monotonic()
        polls = 0
        while True:
            polls += 1
            after = (await quiet.call_tool("slow", {"ms": 0})).structured_content
            if after["othersRunning"] == 0 or time.monotonic() > cancelled_at + 2 * CANCELLED_MS / 1000:
                break
            await anyio.sleep(0.05)
    same(after["othersRunning"], 0, "slow calls still running after the cancellation")
    same(after["completed"] - before["completed"], polls, "calls completed (the cancelled one must not be)")
    same(after["stopped"] - before["stopped"], 1, "calls stopped early")
    return {"stopped": 1, "polls": polls}


async def step_resume(ctx: Ctx) -> dict[str, Any]:
    # The server closes this call's SSE stream before it answers (SEP-1699);
    # the SDK must resume the stream with Last-Event-ID to get the answer.
    result = await ctx.client.call_tool("test_reconnection", {})
    text = result.content[0].text
    same(text, "Reconnection test completed", "the answer after resuming")
    return {"text": text}


async def step_ping(ctx: Ctx) -> dict[str, Any]:
    same(await ctx.client.send_ping(), types.EmptyResult(), "ping result")
    return {}


STEPS = [
    Step("tools/list", step_tools_list),
    Step("tools/call:echo", step_echo),
    Step("tools/call:add", step_add),
    Step("tools/call:invalid-arguments", step_invalid_arguments),
    Step("resources/list", step_resources_list),
    Step("resources/read", step_resources_read),
    Step("prompts", step_prompts),
    Step("progress-and-logging", step_progress_and_logging),
    Step("elicitation", step_elicitation),
    Step("sampling", step_sampling),
    Step("cancel", step_cancel),
    Step("resume", step_resume, modes=("legacy",), transports=("http",)),
    Step("subscribe", step_subscribe, modes=("legacy",)),
    Step("listen", step_listen, modes=(MODERN,), transports=("http",)),
    Step("cancel-quiet", step_cancel_quiet, modes=(MODERN,), transports=("http",)),
    # ping is gone in 2026-07-28.
    Step("ping", step_ping, modes=("legacy",)),
]


def connect(args: argparse.Namespace, seen: Seen) -> Client:
    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        seen.logs.append(params)

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            seen.updated.append(str(message.params.uri))

    async def on_elicit(context: Any, params: Any) -> types.ElicitResult:
        seen.elicitations.append(params)
        return types.ElicitResult(action="accept", content={"username": "py-user", "email": "py@example.org"})

    async def on_sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        seen.samplings.append(params)
        prompt = params.messages[0].content.text
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"py model says: {prompt}"),
            model="interop-model",
            stop_reason="endTurn",
        )

    if args.transport == "http":
        if not args.url:
            raise SystemExit("--transport http needs --url")
        server: Any = args.url
    elif args.transport == "stdio":
        if not args.command:
            raise SystemExit("--transport stdio needs --command")
        server = StdioServerParameters(command=args.command[0], args=args.command[1:])
    else:
        raise SystemExit(f"unknown transport {args.transport}")
    return Client(
        server,
        mode=args.mode,
        client_info=types.Implementation(name="shardmcp-interop-py", version="0.1.0"),
        logging_callback=on_log,
        message_handler=on_message,
        # 2026-07-28 sends log lines only to requests that ask (per-request _meta).
        log_level="debug" if args.mode == MODERN else None,
        elicitation_callback=on_elicit,
        sampling_callback=on_sample,
        # Each request must reach the server: the scenario checks live answers.
        cache=None,
        read_timeout_seconds=60,
    )


async def run(args: argparse.Namespace) -> int:
    base = {"client": "py-sdk", "sdk": version("mcp"), "era": args.mode, "transport": args.transport}

    def report(step: str, **fields: Any) -> None:
        print(json.dumps({**base, "step": step, **fields}), flush=True)

    seen = Seen()
    failed = 0
    try:
        client = connect(args, seen)
        await client.__aenter__()
    except Exception as error:  # noqa: BLE001 - any failure to connect is this step's failure
        report("connect", ok=False, error=repr(error))
        return 1
    try:
        info = client.server_info
        report(
            "connect",
            ok=True,
            protocolVersion=client.protocol_version,
            # No handshake in 2026-07-28: the client knows no server identity up front.
            server=info.name if info else None,
        )
        ctx = Ctx(client=client, client_args=args, mode=args.mode, seen=seen)
        wanted = set(args.steps.split(",")) if args.steps else None
        for step in STEPS:
            if args.mode not in step.modes or args.transport not in step.transports:
                continue
            if wanted is not None and step.name not in wanted:
                continue
            try:
                details = await step.run(ctx)
                report(step.name, ok=True, **details)
            except StepFailure as failure:
                failed += 1
                report(step.name, ok=False, error=str(failure))
            except Exception as error:  # noqa: BLE001 - report, then go on with the next step
                failed += 1
                report(step.name, ok=False, error=f"{type(error).__name__}: {error}")
    finally:
        try:
            await client.__aexit__(None, None, None)
            report("close", ok=True)
        except Exception as error:  # noqa: BLE001
            failed += 1
            report("close", ok=False, error=repr(error))
    return 0 if failed == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["legacy", MODERN], default=MODERN)
    parser.add_argument("--transport", choices=["http", "stdio"], default="http")
    parser.add_argument("--url", help="the server's MCP endpoint (http)")
    parser.add_argument("--steps", help="comma-separated step names to run (default: all)")
    parser.add_argument("--list-steps", action="store_true", help="print the step names and exit")
    parser.add_argument("--command", nargs=argparse.REMAINDER, help="server command line (stdio); must come last")
    args = parser.parse_args()
    if args.list_steps:
        print("\n".join(["connect", *(step.name for step in STEPS)]))
        return 0
    try:
        return asyncio.run(run(args))
    except BaseException as error:  # noqa: BLE001 - a transport crash cancels the whole run
        line = {"client": "py-sdk", "era": args.mode, "transport": args.transport, "step": "transport"}
        print(json.dumps({**line, "ok": False, "error": f"{type(error).__name__}: {error}"}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
